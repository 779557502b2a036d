"""Test set-up: 8 fake CPU devices (for sharding tests) before jax is imported anywhere, and
jax's caches cleared after each test module.

Why clear: a worker process runs dozens of modules, and every compiled XLA:CPU executable
stays mapped in it (memory and memory mappings only grow; CI once died of a segfault an hour
into one process). No module relies on another's compilations."""

import gc
import os
import sys

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="module", autouse=True)
def _clear_jax_caches_after_module():
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
    gc.collect()
