"""Ahead-of-time compilation for Cloud TPU topologies, from any host (no TPU needed).

With libtpu importable, `jax.experimental.topologies.get_topology_desc("v5e:16x16", "tpu")`
gives the compile-only devices of a real TPU topology, and `jit(...).lower(...).compile()` runs
the real TPU compiler for them: its `memory_analysis()` is the per-chip HBM a program needs, and
its `cost_analysis()` the compiler's own FLOPs and `optimal_seconds`. Nothing executes.

    load_libtpu()                                  # .venv/libtpu_site, /tmp/libtpu_site, sys.path
    devices = topology_devices("v5e:16x16", slices=2)
    report = compile_report(jitted.trace(*abstract_args), chip_spec(devices[0]))

The chip table (`CHIPS`) holds per-chip HBM and bf16 peak FLOP/s from Google's Cloud TPU
documentation (v4, v5e, v5p, v6e); the compiler's out-of-memory refusal is parsed into the same
figures as a successful compile (`parse_hbm_error`).
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GIB = 2**30
# Where `make test` / `pip install --target` put libtpu (kept out of site-packages: with libtpu
# importable, jax tries a TPU backend on every start), then the older scratch location.
LIBTPU_PATHS = (str(Path(__file__).resolve().parents[1] / ".venv" / "libtpu_site"),
                "/tmp/libtpu_site")


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip generation: HBM per chip and dense bf16 peak (Cloud TPU documentation)."""

    name: str
    hbm_gib: float
    peak_bf16_tflops: float
    host_cpus: int  # vCPUs of one TPU VM host of this generation (its input pipeline)
    chips_per_host: int


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32.0, 275.0, 240, 4),
    "v5e": Chip("v5e", 16.0, 197.0, 224, 8),  # v5litepod-N with N >= 8: 8 chips per host
    "v5p": Chip("v5p", 95.0, 459.0, 208, 4),
    "v6e": Chip("v6e", 32.0, 918.0, 180, 8),
}
# device_kind strings as the TPU runtime reports them -> CHIPS keys
_DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
                 "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


def chip_spec(device_or_topology: Any) -> Chip:
    """The `Chip` of a device (its `device_kind`) or of a topology name like "v5e:16x16"."""
    if isinstance(device_or_topology, str):
        key = device_or_topology.split(":")[0].lower()
        if key not in CHIPS:
            raise ValueError(f"unknown TPU generation {key!r} in {device_or_topology!r}; "
                             f"known: {', '.join(CHIPS)}")
        return CHIPS[key]
    kind = device_or_topology.device_kind
    if kind not in _DEVICE_KINDS:
        raise ValueError(f"no chip figures for device kind {kind!r}; known: "
                         f"{', '.join(_DEVICE_KINDS)}")
    return CHIPS[_DEVICE_KINDS[kind]]


def libtpu_path(extra: str | None = None) -> str | None:
    """The first folder (or sys.path) from which libtpu imports: `extra`, then LIBTPU_PATHS;
    "" when it is already on sys.path; None when nowhere."""
    if importlib.machinery.PathFinder.find_spec("libtpu", sys.path) is not None:
        return ""
    for path in ([extra] if extra else []) + list(LIBTPU_PATHS):
        if Path(path).is_dir() and importlib.machinery.PathFinder.find_spec(
                "libtpu", [path]) is not None:
            return path
    return None


def missing_libtpu_message(extra: str | None = None) -> str:
    """Where libtpu was looked for, and the command that installs it."""
    looked = ", ".join(([extra] if extra else []) + list(LIBTPU_PATHS) + ["sys.path"])
    return (f"libtpu is not importable (looked in {looked}). Install it with `make libtpu` "
            "(pip install --target .venv/libtpu_site 'libtpu==<the version jax[tpu] pins>') "
            "or `pip install 'tam_jax[libtpu]'` on a machine that should see TPUs.")


def load_libtpu(extra: str | None = None) -> str:
    """Make libtpu importable (prepending its folder to sys.path) and allow a second process
    to load it (nothing runs on a TPU, so its one-process lock is moot). Returns the folder.
    Raises RuntimeError naming the places looked in and the command that installs it."""
    path = libtpu_path(extra)
    if path is None:
        raise RuntimeError(missing_libtpu_message(extra))
    if path and path not in sys.path:
        sys.path.insert(0, path)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return path


def topology_devices(topology: str, slices: int = 1) -> list:
    """Compile-only devices of `topology` ("v5e:16x16", "v6e:8x8", "v5p:4x4x4"), `slices`
    copies joined over DCN (each device's `slice_index` tells its slice). Needs `load_libtpu`."""
    from jax.experimental import topologies

    kwargs = {"num_slices": slices} if slices > 1 else {}
    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                             **kwargs).devices)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = r"([\d.]+)([KMGT]?)"
# The TPU compiler's out-of-memory messages: what each one measures, and its pattern.
_OOM_MESSAGES = (
    ("total", rf"Used {_SIZE} of {_SIZE} hbm"),  # everything the program needs
    ("temp", rf"HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
)


def parse_hbm_error(message: str) -> dict | None:
    """Bytes from the TPU compiler's out-of-memory message: {"total" or "temp": needed,
    "capacity": HBM the compiler may use, "fits": False}; None for any other error."""
    for what, pattern in _OOM_MESSAGES:
        m = re.search(pattern, message)
        if m:
            need, cap = (float(m.group(i)) * _UNITS[m.group(i + 1)] for i in (1, 3))
            return {what: need, "capacity": cap, "fits": False}
    return None


def memory_report(compiled, hbm_gib: float) -> dict:
    """Per-chip bytes of a compiled program: argument, output, alias (donated inputs reused as
    outputs), temp, generated_code; total = argument + output - alias + temp + code; fits."""
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
           ("argument", "output", "alias", "temp", "generated_code")}
    out["total"] = (out["argument"] + out["output"] - out["alias"] + out["temp"]
                    + out["generated_code"])
    out["fits"] = out["total"] <= hbm_gib * GIB
    return out


def cost_report(compiled) -> dict:
    """The compiler's cost model for one chip: flops, bytes accessed, optimal_seconds (XLA
    counts a loop body once: loops' FLOPs are undercounted, see `tam_jax.flops`)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    get = lambda k: float(cost.get(k, float("nan")))
    return {"xla_flops": get("flops"), "bytes_accessed": get("bytes accessed"),
            "optimal_seconds": get("optimal_seconds")}


def compile_report(lowered, chip: Chip) -> dict:
    """Compile a lowered program; its memory and cost, or the compiler's refusal parsed.

    -> {"compile_s", "memory": memory_report | parse_hbm_error | None, "cost" (compiled only),
    "error" (refused only)}."""
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # out of HBM is the compiler refusing: keep its figures
        return {"compile_s": time.perf_counter() - t0, "memory": parse_hbm_error(str(e)),
                "error": f"{type(e).__name__}: {e}"[:1500]}
    return {"compile_s": time.perf_counter() - t0, "memory": memory_report(compiled, chip.hbm_gib),
            "cost": cost_report(compiled)}


# ------------------------------------------------------------------------------------------
# Compiles in child processes (their own memory; killable after a timeout)
# ------------------------------------------------------------------------------------------


def last_result(text: str | bytes | None, mark: str) -> dict | None:
    """The last `mark` + JSON line a child printed (a partial one after the trace, the final
    one after the compile), if any; `text` may be the bytes of a timed-out child."""
    text = text.decode(errors="replace") if isinstance(text, bytes) else text or ""
    found = [ln for ln in text.splitlines() if ln.startswith(mark)]
    return json.loads(found[-1][len(mark):]) if found else None


def run_in_child(script: str | os.PathLike, case: dict, timeout: float, mark: str,
                 extra_env: dict[str, str] | None = None, keep_stderr: bool = False) -> dict:
    """Run `script --_case JSON` (which prints `mark` + JSON result lines) with the topology's
    environment (plus `extra_env`): no TPU backend is needed, and nothing runs, so libtpu's
    one-process lock is moot. Returns the child's last result plus "wall_s"; after a timeout or
    a failed exit it keeps what the child printed and adds "error" (and "stderr_tail").
    `keep_stderr`: the child's whole stderr under "stderr" too (the compiler's log)."""
    cmd = [sys.executable, str(script), "--_case", json.dumps(case)]
    env = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", **os.environ, "JAX_PLATFORMS": "cpu",
           **(extra_env or {})}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:  # keep what the child printed before the compile
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        return {**(last_result(e.stdout, mark) or {}), "wall_s": time.perf_counter() - t0,
                "error": f"timed out after {timeout:.0f} s (trace + lower + compile)",
                **({"stderr": err or ""} if keep_stderr else {})}
    wall = time.perf_counter() - t0
    res = last_result(proc.stdout, mark)
    kept = {"stderr": proc.stderr or ""} if keep_stderr else {}
    if res is not None and proc.returncode == 0:
        return {**res, "wall_s": wall, **kept}
    tail = (proc.stderr or proc.stdout or "").strip()
    if proc.returncode == -signal.SIGKILL:  # its stderr ends mid-log: say what killed it
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        error = (f"killed by SIGKILL after {wall:.0f} s, most likely by the out-of-memory "
                 f"killer: the compile needed more RAM than this host has (largest child so "
                 f"far: {peak:.1f} GiB). Compile on a machine with more memory.")
    else:
        last = tail.splitlines()[-1] if tail else ""  # the exception, not the traceback's start
        error = f"child exited {proc.returncode}: {last}"
    return {**(res or {}), "error": error, "stderr_tail": tail[-1500:], "wall_s": wall, **kept}
