#!/usr/bin/env python
"""Plan a Cloud TPU run from this machine: which setting of a config fits a topology, and at
what cost. Nothing runs on a TPU: the real TPU compiler (libtpu) compiles ahead of time.

    python scripts/tpu_plan.py --config experiments/stage2_video.py:s --topology v5e:16x16
    python scripts/tpu_plan.py --config experiments/stage1_sa1b.py:ti --topology v6e:8x8 \\
        --slices 2 --per_chip_batch 2 --all --json artifacts/plan.json --markdown plan.md

For each setting, cheapest first (ViT block remat none / dots / full x per-frame remat off / on
of the tracking scan, then sharding presets dp / zero1 / fsdp), the config is built exactly as
the trainer builds it (`tam_jax.training.step_setup`: mesh over the topology's chips, "data"
across slices with --slices, state and batch shardings, donation), the train step is traced for
the costliest prompt plan the config draws (most prompted frames, clicks + corrections), its
FLOPs are counted on the jaxpr, and the TPU compiler compiles it: per-chip HBM from
`memory_analysis()` (or from the compiler's out-of-memory refusal), FLOPs and
`optimal_seconds` from `cost_analysis()`. Every data source of the config is a batch shape of
its own (SA-V clips, SA-1B images) and all must fit. The search stops at the first setting that
fits (--all: compile every setting); the config's own setting is compiled too. The inference
track step (one frame, N objects, full memory bank) is compiled for one chip as well.

Table columns, per chip: args / temp / total GiB (total = args + outputs - donated + temp +
code) against the chip's HBM; TFLOP = the step's dot + conv FLOPs (jaxpr count, remat
recomputation included) per chip; ideal s = TFLOP / bf16 peak; XLA s = the compiler's
optimal_seconds (it counts loop bodies once, like its FLOPs: an undercount for the scanned
step); items/s = per-chip batch / max(ideal, XLA); MFU bound = FLOPs / (that time x peak).

Each compile runs in a child process (its own memory; killed after --case_timeout s, keeping
the FLOP count taken before the compile). Compiles of EfficientTAM-S at 1024 take 5-15 minutes
each on a 2-core host. libtpu: `make libtpu` (into .venv/libtpu_site) or --libtpu_path.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.train import apply_overrides, load_config  # noqa: E402
from tam_jax import aot, tpu_planner  # noqa: E402 (jax is imported lazily)

RESULT_MARK = "@@tpu_plan_case@@"
GIB = 2**30


def log(msg: str) -> None:
    print(f"[tpu plan] {msg}", flush=True)


def topology_chips(topology: str) -> int:
    """Chips of one slice of a topology name: "v5e:16x16" -> 256, "v5p:4x4x4" -> 64."""
    _, sep, dims = topology.partition(":")
    try:
        n = math.prod(int(d) for d in dims.split("x"))
    except ValueError:
        n = 0
    if not sep or n < 1:
        raise SystemExit(f"--topology {topology!r}: expected GEN:AxB[xC], e.g. v5e:16x16")
    return n


# ------------------------------------------------------------------------------------------
# Child process: one compile
# ------------------------------------------------------------------------------------------


def run_case(case: dict) -> dict:
    """Compile one case (train: a candidate x a source; track: the inference step)."""
    aot.load_libtpu(case["libtpu_path"])
    config = apply_overrides(load_config(case["config"]), case["set"])
    devices = aot.topology_devices(case["topology"], case["slices"])
    if case["what"] == "track":
        return tpu_planner.compile_track_case(config, devices[0], case["objects"])
    cand = tpu_planner.Candidate(**case["candidate"])
    source = tpu_planner.Source(**case["source"])
    emit = lambda partial: print(RESULT_MARK + json.dumps(partial), flush=True)
    return tpu_planner.compile_train_case(config, cand, devices, source,
                                          all_kinds=case["all_kinds"], emit=emit)


def case_in_child(case: dict, timeout: float) -> dict:
    """`run_case` in a child process; a timeout or a crash keeps what the child printed."""
    return aot.run_in_child(Path(__file__).resolve(), case, timeout, RESULT_MARK)


# ------------------------------------------------------------------------------------------
# The search
# ------------------------------------------------------------------------------------------


def _summary(res: dict) -> str:
    mem = res.get("memory") or {}
    if "total" in mem and "argument" in mem:
        return (f"total {mem['total'] / GIB:.2f} GiB (temp {mem['temp'] / GIB:.2f}), "
                f"fits: {mem['fits']}, compile {res.get('compile_s', 0):.0f} s")
    if mem:
        what = "total" if "total" in mem else "temp"
        return f"refused: {what} {mem[what] / GIB:.2f} GiB > {mem['capacity'] / GIB:.2f} GiB"
    return res.get("error", "no result")[:300]


def plan(args, config, save) -> dict:
    """Compile settings cheapest first until one fits every source (all with --all), plus the
    config's own setting and the track step. `save(out)` after every compile."""
    chip = aot.chip_spec(args.topology)
    chips = topology_chips(args.topology) * args.slices
    chips_per_host = min(chip.chips_per_host, chips)
    sources = tpu_planner.sources(config, chips_per_host, args.per_chip_batch)
    if args.sources:
        unknown = set(args.sources) - {s.name for s in sources}
        if unknown:
            raise SystemExit(f"--sources {sorted(unknown)}: the config's sources are "
                             f"{[s.name for s in sources]}")
        sources = [s for s in sources if s.name in args.sources]
    fsdp = args.fsdp or min(16, topology_chips(args.topology))
    search = tpu_planner.candidates(args.remats, tuple(f == "on" for f in args.remat_frames),
                                    args.presets, fsdp)
    own = tpu_planner.config_candidate(config)
    base = {"config": args.config, "set": args.set, "topology": args.topology,
            "slices": args.slices, "all_kinds": args.all_kinds,
            "libtpu_path": aot.libtpu_path(args.libtpu_path)}
    out = {"chip": dataclasses.asdict(chip), "chips": chips, "chips_per_host": chips_per_host,
           "sources": [dataclasses.asdict(s) for s in sources], "rows": [],
           "config_setting": dataclasses.asdict(own), "recommended": None, "track": None}
    done: dict[tpu_planner.Candidate, list[dict]] = {}

    def evaluate(cand: tpu_planner.Candidate, role: str) -> bool | None:
        results = []
        for src in sources:
            log(f"{cand.label} | {src.name} ({src.frames} frame(s) x {src.objects} objects, "
                f"{src.per_chip}/chip) ...")
            case = {**base, "what": "train", "candidate": dataclasses.asdict(cand),
                    "source": dataclasses.asdict(src)}
            res = case_in_child(case, args.case_timeout)
            res["derived"] = tpu_planner.derive(res, src.per_chip)
            log(f"  {_summary(res)}")
            results.append(res)
            out["rows"].append({"candidate": dataclasses.asdict(cand), "label": cand.label,
                                "role": role, "source": dataclasses.asdict(src),
                                "result": res})
            save(out)
            if tpu_planner.fits(res) is not True and not args.all:
                break  # this setting is out; no need to compile its other sources
        done[cand] = results
        verdicts = [tpu_planner.fits(r) for r in results]
        return all(v is True for v in verdicts) and len(results) == len(sources)

    skip_remat = set()
    for cand in search:
        key = (cand.remat, cand.remat_frames)
        if key in skip_remat and not args.all:
            continue
        ok = evaluate(cand, "config" if cand == own else "search")
        if ok and out["recommended"] is None:
            out["recommended"] = dataclasses.asdict(cand)
            if not args.all:
                break
        if done[cand] and tpu_planner.hopeless_for_presets(done[cand][-1]):
            skip_remat.add(key)
    if own not in done and not args.no_config:
        evaluate(own, "config")
    if not args.no_track:
        clips = [s.objects for s in sources if not s.image]
        objects = args.track_objects or max(clips, default=3)
        log(f"inference track step ({objects} objects, one chip) ...")
        res = case_in_child({**base, "what": "track", "objects": objects}, args.case_timeout)
        res["derived"] = tpu_planner.derive({**res, "chips": 1}, 1)
        log(f"  {_summary(res)}")
        out["track"] = res
        save(out)
    return out


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------


def _gib(mem: dict, key: str) -> str:
    return f"{mem[key] / GIB:.2f}" if key in mem else "-"


def table_rows(out: dict) -> list[list[str]]:
    header = ["setting", "source", "per chip", "args GiB", "temp GiB", "total GiB", "HBM GiB",
              "fits", "TFLOP/chip", "ideal s", "XLA s", "items/s/chip", "MFU bound",
              "compile s"]
    rows = [header]
    rec = out.get("recommended")
    for row in out["rows"]:
        r, d, src = row["result"], row["result"].get("derived") or {}, row["source"]
        mem = r.get("memory") or {}
        fits = {True: "yes", False: "NO", None: "?"}[mem.get("fits")]
        label = row["label"] + (" (config)" if row["candidate"] == out["config_setting"] else "")
        if rec == row["candidate"]:
            label = f"**{label}**"
        total = _gib(mem, "total") if "argument" in mem else (
            f"> {_gib(mem, 'temp')}" if "temp" in mem else _gib(mem, "total"))
        num = lambda k, f, d=d: f.format(d[k]) if k in d and math.isfinite(d[k]) else "-"
        rows.append([label, src["name"], str(src["per_chip"]), _gib(mem, "argument"),
                     _gib(mem, "temp"), total, f"{out['chip']['hbm_gib']:.0f}", fits,
                     num("tflop_per_chip", "{:.2f}"), num("ideal_s", "{:.3f}"),
                     num("optimal_s", "{:.3f}"), num("items_per_s_per_chip", "{:.2f}"),
                     num("mfu_bound", "{:.0%}"),
                     f"{r['compile_s']:.0f}" if "compile_s" in r else "-"])
    return rows


def markdown(out: dict, command: str) -> str:
    rows = table_rows(out)
    lines = [f"`{command}`", "",
             f"{out['chips']} x {out['chip']['name']} chips ({out['chip']['hbm_gib']:.0f} GiB "
             f"HBM, {out['chip']['peak_bf16_tflops']:.0f} TFLOP/s bf16 each), "
             f"{out['chips_per_host']} per host. Batch shapes compiled: "
             + ", ".join(f"{x['name']} ({x['frames']} frame(s) x {x['objects']} objects, "
                         f"{x['per_chip']} per chip)" for x in out["sources"]) + ".", ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(rows[0]))) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    rec = out.get("recommended")
    lines.append("")
    if rec:
        c = tpu_planner.Candidate(**rec)
        sets = " ".join(f"--set {k}={v}" for k, v in c.overrides().items())
        lines.append(f"Recommended: {c.label}: `{sets}`")
        lines += input_lines(out, rec)
    else:
        lines.append("Recommended: none of the settings tried fits.")
    t = out.get("track")
    if t:
        lines += ["", track_line(t)]
    return "\n".join(lines) + "\n"


def input_lines(out: dict, rec: dict) -> list[str]:
    """Per-host input-pipeline need of the recommended setting, against the host's vCPUs."""
    lines = []
    for row in out["rows"]:
        d = row["result"].get("derived") or {}
        if row["candidate"] != rec or not d.get("items_per_s_per_chip"):
            continue
        src = tpu_planner.Source(**row["source"])
        need = tpu_planner.host_input_need(src, d["items_per_s_per_chip"], out["chips_per_host"])
        unit = "images" if src.image else "clips"
        lines.append(f"- input, all-{src.name} steps at the bound: {need['items_per_s']:.1f} "
                     f"{unit}/s per host = {need['cores']:.1f} cores at the measured per-core "
                     f"rate at 1024 px (docs/benchmarks.md), of the host's "
                     f"{out['chip']['host_cpus']} "
                     "vCPUs")
    return lines


def track_line(t: dict) -> str:
    mem, d = t.get("memory") or {}, t.get("derived") or {}
    if "argument" not in mem or not d.get("bound_s"):
        return f"Inference track step ({t.get('objects')} objects, one chip): {_summary(t)}"
    return (f"Inference track step ({t['objects']} objects, one chip, {t['image_size']} px): "
            f"total {_gib(mem, 'total')} GiB of {t['hbm_gib']:.0f}, "
            f"{d['tflop_per_chip']:.3f} TFLOP per frame, ideal {d['ideal_s'] * 1e3:.1f} ms, "
            f"XLA {d['optimal_s'] * 1e3:.1f} ms: at most {1 / d['bound_s']:.0f} frames/s")


def print_table(out: dict) -> None:
    rows = table_rows(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    for row in out["rows"]:
        if "error" in row["result"] and not (row["result"].get("memory") or {}):
            print(f"  {row['label']} | {row['source']['name']}: {row['result']['error'][:240]}")


# ------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=False, help="FILE[:ARG], as scripts/train.py takes it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, as scripts/train.py --set")
    p.add_argument("--topology", default="v5e:16x16",
                   help="TPU topology of one slice: v5e:16x16, v6e:8x8, v5p:4x4x4, v5e:2x2 ...")
    p.add_argument("--slices", type=int, default=1,
                   help="slices joined over DCN (multi-slice; 'data' spans them)")
    p.add_argument("--per_chip_batch", type=int, default=None,
                   help="clips / images per chip (default: each source's per-host batch_size "
                        "over the chips of a host)")
    p.add_argument("--remats", nargs="+", default=["none", "dots", "full"],
                   choices=["none", "dots", "full"], help="ViT block remat policies to try")
    p.add_argument("--remat_frames", nargs="+", default=["off", "on"], choices=["off", "on"],
                   help="per-frame remat of the tracking scan, to try")
    p.add_argument("--presets", nargs="+", default=list(tpu_planner.PRESET_ORDER),
                   choices=list(tpu_planner.PRESET_ORDER), help="sharding presets to try")
    p.add_argument("--fsdp", type=int, default=0,
                   help="mesh fsdp degree for the fsdp preset (0: min(16, chips of a slice))")
    p.add_argument("--all", action="store_true",
                   help="compile every setting (default: stop at the first that fits)")
    p.add_argument("--all_kinds", action="store_true",
                   help="compile every prompt-plan kind (default: the costliest)")
    p.add_argument("--no_track", action="store_true", help="skip the inference track step")
    p.add_argument("--no_config", action="store_true",
                   help="do not also compile the config's own setting when the search skips it")
    p.add_argument("--sources", nargs="+", default=None, metavar="NAME",
                   help="compile only these data sources of the config (e.g. sav); a "
                        "recommendation then covers only them")
    p.add_argument("--track_objects", type=int, default=0,
                   help="objects of the track step (0: the clips' max_objects)")
    p.add_argument("--case_timeout", type=float, default=1800.0,
                   help="seconds per compile (trace + lower + compile) before it is killed")
    p.add_argument("--libtpu_path", default=None,
                   help="a folder holding libtpu (default: .venv/libtpu_site, /tmp/libtpu_site)")
    p.add_argument("--json", default="artifacts/tpu_plan.json")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._case is None and not args.config:
        p.error("--config is required")
    if args.slices < 1:
        p.error("--slices must be >= 1")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args._case is not None:
        print(RESULT_MARK + json.dumps(run_case(json.loads(args._case))), flush=True)
        return 0
    if aot.libtpu_path(args.libtpu_path) is None:
        print(f"tpu_plan: {aot.missing_libtpu_message(args.libtpu_path)}", file=sys.stderr)
        return 2
    aot.chip_spec(args.topology)  # an unknown generation fails here, before any compile
    topology_chips(args.topology)
    config = apply_overrides(load_config(args.config), args.set)
    command = "python scripts/tpu_plan.py " + " ".join(argv)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "date": datetime.date.today().isoformat()}

    def save(out):
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"meta": meta, **out}, indent=1))
        os.replace(tmp, path)

    out = plan(args, config, save)
    save(out)
    print()
    print_table(out)
    if out.get("track"):
        print(track_line(out["track"]))
    text = markdown(out, command)
    rec = out["recommended"]
    if rec:
        c = tpu_planner.Candidate(**rec)
        log("recommended: " + c.label + ": " +
            " ".join(f"--set {k}={v}" for k, v in c.overrides().items()))
    else:
        log("none of the settings tried fits the chip's HBM")
    if args.markdown:
        Path(args.markdown).write_text(text)
        log(f"Markdown: {args.markdown}")
    log(f"JSON: {path}")
    return 0 if rec else 1


if __name__ == "__main__":
    sys.exit(main())
