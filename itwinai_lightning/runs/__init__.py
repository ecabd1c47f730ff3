"""A run's outputs and what the next command takes from them: which checkpoint ``--ckpt_path`` names, and
which checkpoints a run wrote (its own, never another run's). Free of torch/Lightning imports."""
