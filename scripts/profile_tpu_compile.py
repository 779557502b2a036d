#!/usr/bin/env python
"""Where the TPU compiler's time goes, for one train-step compile (ahead of time, no TPU).

    python scripts/profile_tpu_compile.py [--variant efficienttam_ti] [--resolution 256]
        [--frames 8] [--objects 1] [--plan mask] [--remat none] [--remat-frames off]
        [--preset fsdp] [--topology v5e:2x2] [--micro] [--timeout 1800] [--keep-dump DIR]
        [--json artifacts/profile_tpu_compile.json]

Compiles the trainer's step exactly as `scripts/benchmark_train.py` does for one case (its
`run_tpu_case`: mesh, shardings, donation, AdamW state), in a child process whose libtpu logs
its stage durations and per-pass times and dumps the optimised HLO (`tam_jax.compile_profile`).
Prints and writes (JSON):

- the compiler's stages: HLO passes, backend passes (per-fusion code generation), code
  generation, end to end; the ten slowest HLO passes; the final VLIW bundle count; fusions
  the backend had to compile again;
- a census of the optimised program: fusions, loops and conditionals left, collectives, and
  the fusions per model part, forward and gradient;
- trace + lower time, compile time, the step's FLOPs (jaxpr count), peak RSS of the child.

Use it before a long compile (`scripts/tpu_plan.py`, `benchmark_train.py`) to see what the time
will follow; `--micro` (one block per stage) keeps a profile to a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchmark_train import RESULT_MARK  # noqa: E402 (jax-free at import)
from tam_jax import aot, compile_profile  # noqa: E402


def log(msg: str) -> None:
    print(f"[profile tpu compile] {msg}", flush=True)


def run_case(case: dict) -> dict:
    """Child: `benchmark_train.run_tpu_case` (trace, FLOP count, lower, compile for the
    topology; memory and timings; its partial result before the compile carries the same
    RESULT_MARK), plus the child's peak RSS."""
    from scripts import benchmark_train

    res = benchmark_train.run_tpu_case(case)
    res["child_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


def case_of(args) -> dict:
    """The case dict `benchmark_train.run_tpu_case` reads."""
    return {"name": "video", "variant": args.variant, "resolution": args.resolution,
            "frames": args.frames, "objects": args.objects, "plan": args.plan,
            "remat": args.remat, "remat_frames": args.remat_frames == "on",
            "batch_per_device": args.batch_per_device, "topology": args.topology, "chips": 0,
            "preset": args.preset, "fsdp": 0, "micro": args.micro, "hbm_gib": 16.0,
            "libtpu_path": args.libtpu_path}


def profile(args) -> dict:
    """Compile the case in a child with the profiling environment; parse its log and dump."""
    case = case_of(args)
    keep = Path(args.keep_dump) if args.keep_dump else None
    with tempfile.TemporaryDirectory(prefix="tpu_compile_dump_") as tmp:
        dump = keep or Path(tmp)
        dump.mkdir(parents=True, exist_ok=True)
        res = aot.run_in_child(Path(__file__).resolve(), case, args.timeout, RESULT_MARK,
                               extra_env=compile_profile.profile_env(
                                   dump, os.environ.get("XLA_FLAGS", "")),
                               keep_stderr=True)
        res.update(compile_profile.parse_compiler_log(res.pop("stderr", "")))
        try:
            hlo = compile_profile.find_optimised_module(dump)
            res["census"] = compile_profile.hlo_census(hlo.read_text(errors="replace"))
            res["optimised_hlo_bytes"] = hlo.stat().st_size
        except FileNotFoundError as e:  # a compile stopped before its optimised HLO
            res["census_error"] = str(e)
    return {"case": case, "result": res}


def print_table(out: dict) -> None:
    r = out["result"]
    c = out["case"]
    print(f"\n{c['variant']}{' (micro)' if c['micro'] else ''} {c['resolution']} px, "
          f"T={c['frames']} O={c['objects']}, plan {c['plan']}, remat {c['remat']} / frames "
          f"{'on' if c['remat_frames'] else 'off'}, preset {c['preset']}, {c['topology']}")
    if "error" in r:
        print(f"error: {r['error'][:300]}")
    print("\n| stage | s |\n|---|---:|")
    traced = r.get("trace_s", 0.0) + r.get("lower_s", 0.0) if "lower_s" in r else None
    rows = [("trace + FLOP count + lower", traced)] + [
        (k.lower().replace("_", " "), v) for k, v in r.get("stages_s", {}).items()] + [
        ("compile (wall, as jax sees it)", r.get("compile_s"))]
    for name, v in rows:
        if v is not None:
            print(f"| {name} | {v:.1f} |")
    census = r.get("census", {})
    ops = census.get("ops", {})
    print(f"\nbundles {r.get('bundles')}, fusions {ops.get('fusion', 0)} "
          f"({census.get('fusions_in_loops', 0)} inside loops), while loops "
          f"{ops.get('while', 0)}, conditionals {ops.get('conditional', 0)}, instructions "
          f"{census.get('instructions', 0)}, peak RSS {r.get('child_peak_rss_gib', 0):.2f} GiB")
    print("collectives: " + ", ".join(f"{k} {v}" for k, v in ops.items() if "all-" in k
                                      or "reduce-scatter" in k or "collective" in k))
    if census.get("fusions_by_part"):
        print("\n| part | fusions forward | fusions gradient |\n|---|---:|---:|")
        for part, n in census["fusions_by_part"].items():
            print(f"| {part} | {n.get('forward', 0)} | {n.get('backward', 0)} |")
    slow = list(r.get("hlo_passes_s", {}).items())[:10]
    if slow:
        print("\n| slowest HLO passes | s | calls |\n|---|---:|---:|")
        for name, s in slow:
            print(f"| {name} | {s:.2f} | {r['hlo_pass_calls'].get(name, 0)} |")
    if r.get("retried_fusions"):
        print(f"\nfusions compiled again: {r['retried_fusions']}")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Profile one TPU train-step compile (stages, passes, fusion census).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", default="efficienttam_ti")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--objects", type=int, default=1)
    p.add_argument("--batch-per-device", type=int, default=1)
    p.add_argument("--plan", choices=("mask", "click"), default="mask")
    p.add_argument("--remat", choices=("none", "dots", "full"), default="none")
    p.add_argument("--remat-frames", choices=("off", "on"), default="off")
    p.add_argument("--preset", default="fsdp", help="sharding preset (dp, fsdp, zero1)")
    p.add_argument("--topology", default="v5e:2x2")
    p.add_argument("--micro", action="store_true", help="one block per model stage")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before the child "
                   "is killed (what it logged until then is still read)")
    p.add_argument("--keep-dump", default=None, help="keep the XLA dump in this folder")
    p.add_argument("--libtpu-path", default=None)
    p.add_argument("--json", default="artifacts/profile_tpu_compile.json")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)  # child process
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args._case is not None:
        print(RESULT_MARK + json.dumps(run_case(json.loads(args._case))), flush=True)
        return 0
    if aot.libtpu_path(args.libtpu_path) is None:
        print(aot.missing_libtpu_message(args.libtpu_path), file=sys.stderr)
        return 2
    log(f"compiling for {args.topology} in a child process (timeout {args.timeout:.0f} s) ...")
    out = profile(args)
    out["meta"] = {"command": "python scripts/profile_tpu_compile.py " + " ".join(argv),
                   "date": datetime.datetime.now().isoformat(timespec="seconds"),
                   "machine": platform.machine(), "python": platform.python_version()}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print_table(out)
    log(f"JSON: {path}")
    return 1 if "error" in out["result"] else 0


if __name__ == "__main__":
    sys.exit(main())
