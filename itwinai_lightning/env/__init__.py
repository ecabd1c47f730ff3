"""``itwinai-lightning env``: what this node looks like (:mod:`.cli`) and the distributed health check
(:mod:`.healthcheck`)."""
