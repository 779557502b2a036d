"""What a benchmark's JSON says about the machine: the CPU model and package versions.

Benchmark figures depend on both, and this project's CPU host changes between sessions, so
every benchmark script (`benchmark.py`, `benchmark_train.py`, `benchmark_input.py`) records
them next to its numbers.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(dists: tuple[str, ...]) -> dict[str, str]:
    """{"python": version, dist: version} for each installed distribution of `dists`."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
