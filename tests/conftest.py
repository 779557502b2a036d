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


# Seconds of the heaviest test files: the sum of each file's tests among the 30 slowest of the
# CI run of stop 36 (a slow 2-core host, `make test`, 3936 s). Why: the Makefile hands whole
# files to 2 workers in collection order (`--dist loadfile --no-loadscope-reorder`); with
# the heaviest files first, the last files to start are short ones, so one worker does not
# sit idle while the other runs a 14-minute file at the end (longest-first scheduling). xdist's
# own default orders files by their number of tests, which put the demo (1 test, 6 min) and
# the multi-process trainer (3 tests, 14 min) last. An out-of-date table costs balance only.
_HEAVY_FILES_SECONDS = {
    "test_train_step.py": 1129, "test_train_processes.py": 820,
    "test_video_predictor_parity.py": 525, "test_demo.py": 374, "test_benchmark_train.py": 330,
    "test_sweep.py": 244, "test_trainer.py": 235, "test_tpu_plan.py": 221,
    "test_compile_profile.py": 182, "test_benchmark_compile.py": 160,
    "test_memory_readout.py": 144, "test_matmul_precision.py": 129, "test_export.py": 114,
    "test_model.py": 111,
}


def pytest_collection_modifyitems(config, items):
    """Heaviest files first (the table above); the sort is stable, so each file's tests and
    every other file keep their order."""
    items.sort(key=lambda item: -_HEAVY_FILES_SECONDS.get(item.path.name, 0))
