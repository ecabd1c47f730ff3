"""``itwinai-lightning examples``: the shipped example gallery, listed or copied (:mod:`.cli`)."""
