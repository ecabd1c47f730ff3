"""``itwinai-lightning build-horovod``: build Horovod against the installed torch (:mod:`.cli`)."""
