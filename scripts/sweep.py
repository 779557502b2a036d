#!/usr/bin/env python
"""Sweeps: a config's `sweep()` as named runs, run here or launched elsewhere, then one table.

    python scripts/sweep.py list     --config experiments/ablations/memory_pooling.py[:ARG]
    python scripts/sweep.py run      --config CONFIG --root DIR [--parallel N] [--filter RE]
    python scripts/sweep.py commands --config CONFIG --root DIR [--out launch.txt]
    python scripts/sweep.py one      --config CONFIG --root DIR --run NAME
    python scripts/sweep.py collect  --root DIR
    python scripts/sweep.py cost     --config CONFIG [--filter RE] [--json F] [--markdown F]

A run is one entry of the config module's `sweep()` (a dict of dotted overrides, see
experiments/common.py), named by its overrides: `pool_window=2,log_area_constant=keys,...`
(the last part of each key; the same part twice, as train.seed / data.seed, once). It lives in
`<root>/<name>/` and goes through three stages, each resumable:
  1. train     the trainer on the config + overrides (checkpoints, metrics.jsonl, model.json;
               a rerun resumes from the latest checkpoint);
  2. evaluate  `scripts/evaluate.py run` of the final checkpoint on the config's `eval`
               section (held-out videos: J&F; SA-1B images: mIoU) -> eval/summary.json;
  3. cost      the memory attention of the run's model with a full bank
               (`tam_jax/memory_cost.py`): FLOPs per frame from XLA's cost analysis and the
               analytic count, and its median latency on this machine -> cost.json;
then results.json (written last, atomically: a run is finished when it exists).

`run` runs the unfinished runs here, N at a time (`--parallel`; each a `one` subprocess with
its log in <root>/<name>/log.txt), then `collect`s. `commands` prints one `one` command per
unfinished run, for a cluster scheduler: rerun it after a partial pass to get only what is
left. `collect` gathers every <root>/*/results.json into <root>/sweep.csv, sweep.md (Markdown)
and two plots: J&F against memory-attention GFLOPs per frame and against its latency.
`cost` prices every distinct model of the sweep without training: memory-attention FLOPs per
frame with a full bank (XLA's cost analysis and the analytic count) and its median latency here.
`--local` cuts the config to this CPU first (`experiments.common.local`: the tiny model on
synthetic SA-V, made on first use under --local_data) and uses the module's `local_sweep()`
when it has one.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = "results.json"
RUN_INFO = "run.json"
COST = "cost.json"
EVAL_DIR = "eval"
LOG = "log.txt"
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the runs

def load_module(spec: str):
    """The config module of FILE[:ARG]."""
    path = Path(spec.partition(":")[0])
    if not path.is_file():
        raise SystemExit(f"--config: no such file {path}")
    mod_spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    for fn in ("get_config", "sweep"):
        if not hasattr(module, fn):
            raise SystemExit(f"--config: {path} defines no {fn}()")
    return module


def entries(spec: str, local: bool) -> list[dict]:
    module = load_module(spec)
    if local and hasattr(module, "local_sweep"):
        return list(module.local_sweep())
    return list(module.sweep())


def _fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "+".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
    """`last_key_part=value,...` in the entry's order; characters outside [A-Za-z0-9._+=-] -> _."""
    parts: list[str] = []
    for key, value in overrides.items():
        if key == "model.overrides":  # a list of (model field path, value) pairs
            items = [(k, v) for k, v in value]
        else:
            items = [(key, value)]
        for k, v in items:
            part = re.sub(r"[^A-Za-z0-9._+=-]", "_", f"{k.split('.')[-1]}={_fmt(v)}")
            if part not in parts:
                parts.append(part)
    return ",".join(parts) or "base"


def named_runs(spec: str, local: bool, pattern: str | None = None) -> dict[str, dict]:
    """{run name: overrides} of the config's sweep (filtered by a regex on the name)."""
    runs: dict[str, dict] = {}
    for overrides in entries(spec, local):
        name = run_name(overrides)
        if name in runs:
            raise SystemExit(f"two sweep entries have the same name {name!r}: {runs[name]} and "
                             f"{overrides}")
        runs[name] = overrides
    if pattern:
        runs = {k: v for k, v in runs.items() if re.search(pattern, k)}
    return runs


def build_config(spec: str, overrides: Mapping[str, Any], local: bool, local_data: str,
                 sets: list[str] = ()):
    """FILE[:ARG]'s config [cut to local] + the run's overrides + --set KEY=VALUE pairs."""
    from experiments import common
    from scripts.train import apply_overrides, load_config

    config = load_config(spec)
    if local:
        config = common.local(config, local_data)
    return apply_overrides(common.apply(config, overrides), list(sets))


def status(run_dir: Path) -> str:
    if (run_dir / RESULTS).exists():
        return "done"
    return "partial" if run_dir.exists() else "new"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file


# ---------------------------------------------------------------------------- local data

def ensure_local_data(root: str) -> None:
    """The demo's synthetic data under `root` (`scripts/demo.py`: SA-V train tars prepared to
    TFDS + held-out SA-V val videos; skipped when present), smaller: 64 training and 4
    held-out videos of 24 frames at 128 px."""
    from scripts import demo

    sizes = argparse.Namespace(frames=24, train_shards=4, image_shards=0, eval_videos=4,
                               object_size=(0.18, 0.3), object_speed=(0.3, 1.0), objects=3,
                               distractors=1)
    train_raw, _ = demo.make_data(Path(root), sizes)
    demo.prepare(Path(root), train_raw)


# ---------------------------------------------------------------------------- one run

def _last_train_loss(run_dir: Path) -> tuple[int | None, float | None]:
    """(step, train/loss) of the last logged training step (metrics.jsonl)."""
    from tam_jax.evaluation.plots import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None, None
    steps, losses = read_metrics(path, "train/loss")
    return (int(steps[-1]), float(losses[-1])) if len(steps) else (None, None)


def run_one(spec: str, root: Path, name: str, local: bool, local_data: str,
            timing_repeats: int = 5, sets: list[str] = ()) -> dict:
    """Train, evaluate and price one run; returns its results (also <root>/<name>/results.json)."""
    runs = named_runs(spec, local)
    if name not in runs:
        raise SystemExit(f"--run {name!r} is not in the sweep of {spec}; "
                         f"`sweep.py list --config {spec}` shows the names")
    overrides = runs[name]
    run_dir = root / name
    if (run_dir / RESULTS).exists():
        print(f"{name}: finished already ({run_dir / RESULTS})")
        return json.loads((run_dir / RESULTS).read_text())
    if local:
        ensure_local_data(local_data)
    config = build_config(spec, overrides, local, local_data, sets)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / RUN_INFO, {"name": name, "config": spec, "local": local,
                                     "overrides": overrides, "sets": list(sets)})
    t0 = time.time()

    print(f"[1/3] train {name}", flush=True)
    from tam_jax.training.trainer import train

    train(config, str(run_dir))
    train_s = time.time() - t0
    from tam_jax import checkpointing

    step = checkpointing.find_latest_checkpoint(run_dir)[1]
    if step != int(config.train.num_steps):  # stopped early (SIGTERM): not a result yet
        raise SystemExit(f"{name}: training stopped at step {step} of "
                         f"{config.train.num_steps}; rerun to resume it")

    print(f"[2/3] evaluate on {config.eval.data_dir}", flush=True)
    from scripts import evaluate as evaluate_script

    argv = ["run", "--checkpoint", str(run_dir), "--data_dir", str(config.eval.data_dir),
            "--format", str(config.eval.format), "--out", str(run_dir / EVAL_DIR), "--quiet"]
    if config.eval.get("max_videos"):
        argv += ["--max_videos", str(config.eval.max_videos)]
    if evaluate_script.main(argv):
        raise SystemExit(f"{name}: evaluate.py {' '.join(argv)} failed")
    summary = json.loads((run_dir / EVAL_DIR / "summary.json").read_text())
    eval_s = time.time() - t0 - train_s

    print("[3/3] memory-attention cost (full bank)", flush=True)
    from tam_jax import memory_cost
    from tam_jax.evaluation.weights import eval_config, read_model_description

    variant, model_overrides = read_model_description(run_dir)
    cost = memory_cost.memory_attention_cost(eval_config(variant, model_overrides),
                                             timing_repeats=timing_repeats)
    _write_json(run_dir / COST, cost)

    last_step, last_loss = _last_train_loss(run_dir)
    results = {
        "name": name,
        "overrides": overrides,
        "sets": list(sets),
        "config": spec + (" --local" if local else ""),
        "steps": last_step,
        "final_train_loss": last_loss,
        "scores": summary.get("scores", {}),
        "eval_frames_per_s": summary.get("frames_per_s"),
        "memory_attention": cost,
        "wall_s": {"train": round(train_s, 1), "evaluate": round(eval_s, 1),
                   "total": round(time.time() - t0, 1)},
    }
    _write_json(run_dir / RESULTS, results)
    print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results["scores"].items()
                                  if isinstance(v, float)))
    return results


# ---------------------------------------------------------------------------- collect

COLUMNS = ("name", "J&F", "J", "F", "mIoU_1click", "mIoU_5click", "final_train_loss", "steps",
           "attended_keys", "xla_gflops", "analytic_gflops", "latency_ms", "eval_frames_per_s")


def read_results(root: Path) -> list[dict]:
    """Every <root>/*/results.json, flattened to COLUMNS-keyed rows (+ "_cost", for plots)."""
    rows = []
    for path in sorted(root.glob(f"*/{RESULTS}")):
        try:
            res = json.loads(path.read_text())
        except ValueError as e:
            raise SystemExit(f"{path}: not JSON ({e})") from None
        row: dict[str, Any] = {"name": res["name"]}
        scores = res.get("scores", {})
        for key in ("J&F", "J", "F"):
            row[key] = scores.get(key)
        row["mIoU_1click"] = scores.get("mIoU@1")  # image folders (evaluation/image_eval.py)
        row["mIoU_5click"] = scores.get("mIoU@5")
        for key in ("final_train_loss", "steps", "eval_frames_per_s"):
            row[key] = res.get(key)
        cost = res.get("memory_attention", {})
        for key in ("attended_keys", "xla_gflops", "analytic_gflops", "latency_ms"):
            row[key] = cost.get(key)
        row["_cost"] = cost
        rows.append(row)
    return rows


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def _markdown(columns, rows) -> list[str]:
    """A Markdown table (header, rule, one line per row) of `columns` of `rows`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]


def _series_name(cost: Mapping[str, Any]) -> str:
    w = cost.get("pool_window", 1)
    if w == 1:
        return "full (window 1)"
    ptr = ", pointers pooled" if cost.get("pool_pointer_tokens") else ""
    return f"window {w}, {cost.get('log_area_constant')}{ptr}"


def collect(root: Path, out: Path | None = None) -> dict[str, Path]:
    """sweep.csv, sweep.md and the two plots from every finished run under `root`."""
    from tam_jax.evaluation.plots import line_chart

    rows = read_results(root)
    if not rows:
        raise SystemExit(f"{root}: no finished runs (no */{RESULTS})")
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    columns = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    paths = {"csv": out / "sweep.csv", "markdown": out / "sweep.md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    lines = _markdown(columns, rows)
    paths["markdown"].write_text("\n".join(lines) + "\n")
    score = "J&F" if any(r.get("J&F") is not None for r in rows) else "mIoU_1click"
    for x_key, file, what, unit in (
            ("xla_gflops", "jf_vs_flops.png", "memory-attention GFLOPs per frame",
             "XLA cost analysis, full memory bank"),
            ("latency_ms", "jf_vs_latency.png", "memory-attention latency per frame",
             "ms, median on the machine that ran the sweep, full memory bank")):
        series: dict[str, tuple[list, list]] = {}
        for r in rows:
            if r.get(x_key) is None or r.get(score) is None:
                continue
            xs, ys = series.setdefault(_series_name(r["_cost"]), ([], []))
            xs.append(r[x_key])
            ys.append(r[score])
        if series:
            paths[file] = line_chart(series, out / file, title=f"{score} vs {what}",
                                     xlabel=f"{what} ({unit})", ylabel=score, lines=False)
    print("\n".join(lines))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


# ---------------------------------------------------------------------------- CLI

def _one_args(args, name: str) -> list[str]:
    """The arguments of `sweep.py` that run `name` alone."""
    cmd = ["one", "--config", args.config, "--root", str(args.root), "--run", name]
    if args.local:
        cmd += ["--local", "--local_data", args.local_data]
    for pair in args.set:
        cmd += ["--set", pair]
    return cmd


def cmd_list(args) -> int:
    runs = named_runs(args.config, args.local, args.filter)
    root = Path(args.root) if args.root else None
    for name in runs:
        print(f"{status(root / name):8s} {name}" if root else name)
    print(f"{len(runs)} runs", file=sys.stderr)
    return 0


def cmd_commands(args) -> int:
    root = Path(args.root)
    runs = named_runs(args.config, args.local, args.filter)
    todo = [n for n in runs if status(root / n) != "done"]
    lines = [shlex.join(["python", "scripts/sweep.py", *_one_args(args, n)]) for n in todo]
    text = "\n".join(lines) + ("\n" if lines else "")
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(lines)} commands to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(f"{len(todo)} of {len(runs)} runs left ({len(runs) - len(todo)} finished); run each "
          "line from the repository root", file=sys.stderr)
    return 0


def cmd_one(args) -> int:
    run_one(args.config, Path(args.root), args.run, args.local, args.local_data,
            args.timing_repeats, args.set)
    return 0


def _run_env(local: bool) -> dict[str, str]:
    """A run's environment: this one, except that a local run sees this CPU as one device
    (a fake device count, e.g. from a test, would not divide the local batch of 2)."""
    env = dict(os.environ)
    if local and "XLA_FLAGS" in env:
        env["XLA_FLAGS"] = " ".join(f for f in env["XLA_FLAGS"].split()
                                    if not f.startswith("--xla_force_host_platform_device_count"))
    return env


def cmd_run(args) -> int:
    from tqdm import tqdm

    root = Path(args.root)
    runs = named_runs(args.config, args.local, args.filter)
    todo = [n for n in runs if status(root / n) != "done"]
    print(f"{len(todo)} of {len(runs)} runs to do under {root} ({args.parallel} at a time)")
    if args.local and todo:
        ensure_local_data(args.local_data)  # once, before the runs start in parallel
    failed: list[str] = []
    running: list[tuple[str, subprocess.Popen, Any]] = []
    bar = tqdm(total=len(todo), desc="runs", unit="run")
    queue = list(todo)
    while queue or running:
        while queue and len(running) < args.parallel:
            name = queue.pop(0)
            (root / name).mkdir(parents=True, exist_ok=True)
            log = open(root / name / LOG, "a")
            cmd = [sys.executable, str(REPO / "scripts" / "sweep.py"), *_one_args(args, name)]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                    env=_run_env(args.local))
            running.append((name, proc, log))
        time.sleep(1.0)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            bar.update(1)
            if proc.returncode:
                failed.append(name)
                tqdm.write(f"FAILED {name} (exit {proc.returncode}): see {root / name / LOG}")
            else:
                tqdm.write(f"done   {name}")
    bar.close()
    if any(status(root / n) == "done" for n in runs):
        collect(root)
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)}")
        return 1
    return 0


def cmd_collect(args) -> int:
    collect(Path(args.root), Path(args.out) if args.out else None)
    return 0


COST_COLUMNS = ("image_size", "pool_window", "log_area_constant", "pool_pointer_tokens",
                "num_maskmem", "memory_tokens", "attended_keys", "analytic_gflops",
                "xla_gflops", "latency_ms", "latency_min_ms", "latency_max_ms")


def cmd_cost(args) -> int:
    """Memory-attention cost of every distinct model config in the sweep (no training)."""
    from tqdm import tqdm

    from tam_jax import memory_cost
    from tam_jax.training.trainer import model_config

    runs = named_runs(args.config, args.local, args.filter)
    models = {}
    for name, overrides in runs.items():
        cfg = model_config(build_config(args.config, overrides, args.local, args.local_data,
                                        args.set))
        models.setdefault(cfg, name)  # seeds etc. give the same model: priced once
    print(f"{len(models)} distinct models in {len(runs)} runs", file=sys.stderr)
    rows = []
    for cfg in tqdm(models, desc="cost", unit="model"):
        rows.append(memory_cost.memory_attention_cost(cfg, timing_repeats=args.timing_repeats))
    columns = [c for c in COST_COLUMNS if any(c in r for r in rows)]
    lines = _markdown(columns, rows)
    print("\n".join(lines))
    if args.json:
        _write_json(Path(args.json), {"config": args.config, "local": args.local,
                                      "sets": args.set, "rows": rows})
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from experiments.common import LOCAL_DATA

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp, root_required: bool):
        sp.add_argument("--config", required=True, help="experiments/FILE.py[:ARG]")
        sp.add_argument("--root", required=root_required,
                        help="the sweep's folder: one workdir per run")
        sp.add_argument("--local", action="store_true",
                        help="cut the config to this CPU (tiny model, synthetic data) and use "
                             "local_sweep() when the module has one")
        sp.add_argument("--local_data", default=LOCAL_DATA,
                        help="where --local makes and finds its synthetic data")
        sp.add_argument("--filter", default=None, metavar="REGEX",
                        help="only runs whose name matches")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, after its sweep overrides (as train.py "
                             "--set; not part of run names: keep it the same across passes)")

    sp = sub.add_parser("list", help="the runs (and their state under --root)")
    with_config(sp, False)
    sp.set_defaults(fn=cmd_list)
    sp = sub.add_parser("run", help="run the unfinished runs here, then collect")
    with_config(sp, True)
    sp.add_argument("--parallel", type=int, default=1, help="runs at a time")
    sp.add_argument("--timing_repeats", type=int, default=5)
    sp.set_defaults(fn=cmd_run)
    sp = sub.add_parser("commands", help="one launch command per unfinished run")
    with_config(sp, True)
    sp.add_argument("--out", default=None, help="write them here (default: stdout)")
    sp.set_defaults(fn=cmd_commands)
    sp = sub.add_parser("one", help="train, evaluate and price one run")
    with_config(sp, True)
    sp.add_argument("--run", required=True, help="the run's name (see list)")
    sp.add_argument("--timing_repeats", type=int, default=5,
                    help="timed calls of the memory attention (after a warm-up)")
    sp.set_defaults(fn=cmd_one)
    sp = sub.add_parser("cost", help="memory-attention FLOPs and latency of every model of "
                                     "the sweep, full bank (no training)")
    with_config(sp, False)
    sp.add_argument("--timing_repeats", type=int, default=3,
                    help="timed calls per model after a warm-up (0: FLOPs only)")
    sp.add_argument("--json", default=None, help="also write the rows here")
    sp.add_argument("--markdown", default=None, help="also write the table here")
    sp.set_defaults(fn=cmd_cost)
    sp = sub.add_parser("collect", help="CSV, Markdown table and plots of the finished runs")
    sp.add_argument("--root", required=True)
    sp.add_argument("--out", default=None, help="default: --root")
    sp.set_defaults(fn=cmd_collect)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "parallel", 1) < 1:
        raise SystemExit("--parallel must be >= 1")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
