"""Fixtures shared with the tune tests."""

from tests.tune.conftest import ray_tmp  # noqa: F401 -- the short Ray temp dir fixture
