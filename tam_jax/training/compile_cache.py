"""The persistent XLA compilation cache of a training run.

Why: a train step is one large program, and compiling it is minutes on a TPU pod's hosts and
on this project's CPUs (docs/benchmarks.md, "Where the TPU compile time goes"). A run that is
restarted (preempted, killed, resumed with the same command, `make demo` run again) would
compile the same programs again; with the cache it loads them.

    path = compile_cache.resolve(flag, workdir)   # "auto" | "none" | a folder or gs:// URL
    compile_cache.enable(path)                    # before anything is compiled

"auto" (the trainer script's default) is `$JAX_COMPILATION_CACHE_DIR` when that is set, else
`<workdir>/compile_cache`: the workdir outlives the job, as its checkpoints must. Only programs
that took >= 1 s to compile are written (jax's threshold, `jax_persistent_cache_min_compile_
time_secs`). Entries are keyed on the program, the devices and the jax / XLA versions, so a
changed config or code never loads a stale program. A cache is trusted code: do not point it at
a folder others can write to (jax's own warning).
"""

from __future__ import annotations

import os
from pathlib import Path

from tam_jax import storage

AUTO, NONE = "auto", "none"
ENV = "JAX_COMPILATION_CACHE_DIR"


def resolve(flag: str | None, workdir: str | os.PathLike) -> str | None:
    """The cache folder a run should use, or None for no cache (see the module docstring)."""
    if flag is None or flag == AUTO:
        if os.environ.get(ENV):
            return os.environ[ENV]
        workdir = str(workdir)
        if storage.is_url(workdir):  # gs://bucket/run: pathlib would fold the "//"
            return workdir.rstrip("/") + "/compile_cache"
        return str(Path(workdir) / "compile_cache")
    if flag.lower() == NONE or flag == "":
        return None
    return flag


def enable(path: str | None) -> None:
    """Point jax's persistent compilation cache at `path` (None: turn it off).

    jax opens the cache at the first compile of the process and keeps that folder, so this must
    run before anything is compiled; the trainer script calls it first thing."""
    import jax

    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    if not storage.is_url(path):  # a local folder; gs:// and other URLs are jax's to open
        Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
