"""Where the TPU compiler spends its time: its own log and its HLO dump, read into figures.

A TPU compile run with the environment of `profile_env(dump_dir)` logs the duration of each of
its stages (HLO passes, backend passes, code generation), each HLO pass's time, the program's
final VLIW bundle count and any fusion it had to compile again, and dumps the optimised HLO.
`parse_compiler_log` and `hlo_census` turn those into numbers; `scripts/profile_tpu_compile.py`
runs one train-step compile that way and prints them.

What it showed on this project's steps (docs/benchmarks.md, "Where the TPU compile time goes"):
the backend passes (per-fusion code generation, on every core) take 53-83 % of the time; the
frame scan stays a loop, so the clip length hardly matters; half the fusions are the
optimiser's per-leaf bookkeeping.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

# libtpu's own logging (INFO to stderr) plus per-pass timings of XLA's pass pipelines.
PROFILE_ENV = {"TPU_STDERR_LOG_LEVEL": "0", "TPU_MIN_LOG_LEVEL": "0",
               "TPU_VMODULE": "hlo_pass_pipeline=1"}


def profile_env(dump_dir: str | Path, xla_flags: str = "") -> dict[str, str]:
    """Environment for a compile whose log and HLO dump this module reads."""
    flags = f"{xla_flags} --xla_dump_to={dump_dir}".strip()
    return {**PROFILE_ENV, "XLA_FLAGS": flags}


_DURATION_PART = re.compile(r"([\d.]+)(h|ms|us|µs|ns|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """Seconds of a Go-style duration as libtpu prints them: "2m40.43s", "34.8s", "850ms"."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


_STAGE = re.compile(r"\] (\w+) stage duration: (\S+)")
# "HLO pass: dce time: 4.62 ms (4617 us) (cumulative: ..., max: ..., #called: ...)": the
# cumulative and #called figures are the whole pipeline's running counters, not the pass's,
# so a pass's total is the sum of its own "(N us)" over every run of it.
_PASS = re.compile(r"HLO pass: (\S+) time: [^(]*\((\d+) us\)")
_BUNDLES = re.compile(r"final program bundle count: ([\d,]+)")
_RETRY = re.compile(r"Successful retry compilation of (\S+) after retry_count=(\d+)")


def parse_compiler_log(text: str) -> dict:
    """Figures from a TPU compile's stderr (run with `profile_env`).

    -> {"stages_s": {"HLO_PASSES": s, "BACKEND_PASSES": s, "CODE_GENERATION": s,
    "END_TO_END": s} (those logged; the last duration of each), "hlo_passes_s": {pass: total
    seconds over its runs} (largest first; a nested pipeline counts as itself and as its
    passes), "hlo_pass_calls": {pass: runs}, "bundles": final VLIW bundle count or None,
    "retried_fusions": {fusion: retries}}."""
    stages: dict[str, float] = {}
    passes: dict[str, float] = {}
    calls: dict[str, int] = {}
    bundles = None
    retried: dict[str, int] = {}
    for line in text.splitlines():
        if m := _STAGE.search(line):
            stages[m.group(1)] = parse_duration(m.group(2))
        elif m := _PASS.search(line):
            name = m.group(1)
            passes[name] = passes.get(name, 0.0) + int(m.group(2)) * 1e-6
            calls[name] = calls.get(name, 0) + 1
        elif m := _BUNDLES.search(line):
            bundles = int(m.group(1).replace(",", ""))
        elif m := _RETRY.search(line):
            retried[m.group(1)] = int(m.group(2))
    ordered = dict(sorted(passes.items(), key=lambda kv: -kv[1]))
    return {"stages_s": stages, "hlo_passes_s": ordered, "hlo_pass_calls": calls,
            "bundles": bundles, "retried_fusions": retried}


# Instructions whose count drives the backend's work (each one is code generated on its own)
# or tells what the compiler did to the loops.
COUNTED_OPS = ("fusion", "while", "conditional", "convolution", "custom-call", "copy",
               "copy-start", "all-gather", "all-gather-start", "reduce-scatter", "all-reduce",
               "all-reduce-start", "all-to-all", "collective-permute",
               "collective-permute-start")
_INSTR = re.compile(r"^\s*(?:ROOT )?%\S+ = .*? ([a-z][a-z-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Which part of the model an instruction belongs to, from its op_name (first match wins).
PARTS = (("image encoder", ("encode_image", "image_encoder")),
         ("memory attention", ("condition_on_memory", "memory_attention")),
         ("mask decoder", ("sam_mask_decoder",)),
         ("prompt encoder", ("sam_prompt_encoder",)),
         ("memory encoder", ("encode_memory", "memory_encoder", "mask_downsample")),
         ("object pointer", ("obj_ptr",)))


def part_of(op_name: str) -> str:
    """The model part an instruction's op_name names; "other" (optimiser, losses, glue)."""
    for part, keys in PARTS:
        if any(k in op_name for k in keys):
            return part
    return "other"


def hlo_census(hlo_text: str) -> dict:
    """Counts over an optimised HLO module's text (`*.after_optimizations.txt`).

    -> {"ops": {op: count} for COUNTED_OPS, "instructions": all instructions, "fusions_by_part":
    {part: {"forward": n, "backward": n}} (backward = op_name under a `transpose(...)`, i.e. the
    gradient), "fusions_in_loops": fusions inside a while loop's body}."""
    ops: collections.Counter = collections.Counter()
    by_part: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total = in_loops = 0
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        total += 1
        op = m.group(1)
        if op not in COUNTED_OPS:
            continue
        ops[op] += 1
        if op != "fusion":
            continue
        name = _OP_NAME.search(line)
        name = name.group(1) if name else ""
        by_part[part_of(name)]["backward" if "transpose(" in name else "forward"] += 1
        in_loops += "/while/body/" in name
    return {"ops": {op: ops.get(op, 0) for op in COUNTED_OPS if ops.get(op)},
            "instructions": total,
            "fusions_by_part": {p: dict(c) for p, c in sorted(
                by_part.items(), key=lambda kv: -sum(kv[1].values()))},
            "fusions_in_loops": in_loops}


def find_optimised_module(dump_dir: str | Path, name: str = "jit_step") -> Path:
    """The TPU compiler's optimised HLO of module `name` in an XLA dump folder (the CPU
    backend's own dumps, `*.cpu_after_optimizations.txt`, are left out)."""
    found = [p for p in Path(dump_dir).glob(f"*.{name}.*after_optimizations.txt")
             if "cpu_after" not in p.name]
    if not found:
        raise FileNotFoundError(f"no optimised HLO of {name!r} in {dump_dir} (files: "
                                f"{sorted(p.name for p in Path(dump_dir).iterdir())[:8]} ...)")
    return max(found, key=lambda p: p.stat().st_size)
