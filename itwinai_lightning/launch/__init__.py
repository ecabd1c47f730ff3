"""Launchers, read in one place: the launcher table (:mod:`.table`), "where am I" (:mod:`.where`), the
SLURM nodelist (:mod:`.nodelist`), the Lightning cluster environment with the launch-layout checks and
main-address rules (:mod:`.environment`), where each rank really runs (:mod:`.placement`), and the one
renderer of sbatch scripts (:mod:`.sbatch`). Strategies, ``slurm``, ``benchmark`` and ``tune`` consume it.

Importing this package imports nothing heavy (no torch.distributed, MPI or Ray).
"""
