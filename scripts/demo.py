#!/usr/bin/env python
"""`make demo`: from nothing to a trained video tracker on this CPU, evaluated and drawn.

    python scripts/demo.py [--workdir artifacts/demo] [--num_steps N] [--fresh]

1. data      synthetic SA-V training videos (real tars: H.264 mp4 + manual-annotation JSON),
             SA-1B images (real tars: JPEG + annotation JSON) and held-out videos in the SA-V
             val layout (JPEG frames, per-object PNG masks), different seeds: textured objects
             that move, scale, occlude each other, leave the frame and come back, next to
             look-alike distractors (`scripts/make_synthetic_data.py`)
2. prepare   the SA-V and SA-1B TFDS builders turn the tars into ArrayRecord
             (`scripts/prepare_data.py`)
3. train     a small EfficientTAM (`experiments/demo.py`: the tiny variant, 128 px, 3-frame
             clips with the first frame prompted by its mask, 1 step in 10 an SA-1B image
             batch prompted by clicks; two additions to SAM 2's recipe, frames shifted
             apart and a loss on the memory attention's match) from scratch with the real
             trainer
             (`scripts/train.py`: Grain pipeline, jit train step, Orbax checkpoints; rerunning
             the demo resumes it)
4. evaluate  semi-supervised VOS on the held-out videos (first-frame masks in, every frame
             tracked, J&F as the SA-V evaluator) for three trackers: the trained model, the
             same model untrained, and "copy the first-frame mask to every frame"
             (`scripts/evaluate.py run`)
5. pictures  the loss curve (PNG, from the trainer's metrics.jsonl) and overlay GIFs of the
             trained model's masks
6. summary   the three J&F side by side, the targets (trained J&F >= 0.75 and >= 0.15 above
             the copy baseline), wall time and peak memory; summary.json. Exit status 0
             when every stage ran (targets met or not: both are printed and saved);
             `--require_targets` makes a missed target exit 1.

Everything lands under --workdir; `--fresh` deletes it first. The converter round trip
(official .pt -> tam_jax -> .pt with parity figures) is `scripts/demo_convert.py`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = "experiments/demo.py"
TARGET_JF = 0.75  # the issue's bar for the trained model on held-out videos
TARGET_MARGIN = 0.15  # ... and its margin over the copy-first-mask baseline
TRACKERS = ("trained", "untrained", "copy_first_mask")


def _stage(k: int, text: str) -> None:
    print(f"\n[{k}/6] {text}", flush=True)


def make_data(work: Path, args) -> tuple[dict[str, Path], Path]:
    """Raw synthetic data (skipped when already written) -> ({dataset: training tars dir},
    held-out dir); SA-1B only with args.image_shards > 0."""
    from scripts import make_synthetic_data

    raw = work / "raw"
    train, images, held_out = raw / "sav", raw / "sa1b", raw / "sav_val"
    common = ["--frames", str(args.frames), "--objects", str(args.objects),
              "--distractors", str(args.distractors), "--height", "128", "--width", "128",
              "--object_size", *map(str, args.object_size),
              "--object_speed", *map(str, args.object_speed)]
    training = {"sav": train}
    parts = [("train.done", train, ["--kinds", "sav", "--shards", str(args.train_shards),
                                    "--per_shard", "16", "--seed", "0", *common]),
             ("held_out.done", held_out, ["--kinds", "sav_val", "--per_shard",
                                          str(args.eval_videos), "--seed", "1", *common])]
    if args.image_shards:  # (sweep.py's local data has videos only)
        training["sa1b"] = images
        parts.append(("images.done", images, ["--kinds", "sa1b", "--shards",
                                              str(args.image_shards), "--per_shard", "64",
                                              "--seed", "2", *common]))
    for marker, folder, argv in parts:
        done = raw / marker  # holds the arguments it was written with
        if done.exists():
            written = done.read_text()
            if written != " ".join(argv):
                raise SystemExit(f"{folder} was written with other data options ({written}): "
                                 "rerun with --fresh or another --workdir")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if make_synthetic_data.main(["--out", str(raw), *argv]):
            raise SystemExit(f"synthetic data failed: {folder}")
        done.write_text(" ".join(argv))
    return training, held_out


def prepare(work: Path, raw: dict[str, Path]) -> Path:
    """Each training dataset ({"sav": tars dir, "sa1b": tars dir}) through its TFDS builder."""
    from scripts import prepare_data

    tfds_dir = work / "tfds"
    for name, manual_dir in raw.items():
        if (tfds_dir / name / "1.0.0" / "prepare_report.json").exists():
            print(f"  already prepared: {tfds_dir / name}")
            continue
        if prepare_data.main([name, "--manual_dir", str(manual_dir), "--data_dir",
                              str(tfds_dir)]):
            raise SystemExit(f"prepare_data.py {name} failed")
    return tfds_dir


def train(work: Path, tfds_dir: Path, args) -> Path:
    from scripts import train as train_script
    from scripts.train import load_config

    run = work / "run"
    config = load_config(f"{CONFIG}:{args.config_arg}")
    sets = [f"data.sources.{k}.data_dir={tfds_dir}" for k in range(len(config.data.sources))]
    if args.num_steps:
        warmup = int(config.optimizer.warmup_steps)
        sets += [f"train.num_steps={args.num_steps}", f"optimizer.total_steps={args.num_steps}",
                 f"optimizer.warmup_steps={min(warmup, args.num_steps // 4)}"]
    for s in args.set:
        sets.append(s)
    argv = ["--config", f"{CONFIG}:{args.config_arg}", "--workdir", str(run)]
    for s in sets:
        argv += ["--set", s]
    print("  python scripts/train.py " + " ".join(argv), flush=True)
    if train_script.main(argv):
        raise SystemExit("training failed")
    return run


def evaluate(work: Path, run: Path, held_out: Path, variant: str, overrides) -> dict:
    """Each tracker's summary.json (scripts/evaluate.py run), keyed by TRACKERS."""
    from scripts import evaluate as evaluate_script

    over = []
    for k, v in overrides:
        over += ["--override", f"{k}={v}"]
    runs = {
        "trained": ["--checkpoint", str(run), "--variant", variant, *over, "--overlays",
                    "--gif"],
        "untrained": ["--checkpoint", "none", "--variant", variant, *over],
        "copy_first_mask": ["--baseline", "copy_first_mask"],
    }
    summaries = {}
    for name in TRACKERS:
        out = work / "eval" / name
        print(f"  {name}:", flush=True)
        argv = ["run", *runs[name], "--data_dir", str(held_out), "--format", "sav", "--out",
                str(out)]
        if evaluate_script.main(argv):
            raise SystemExit(f"evaluate.py {' '.join(argv)} failed")
        summaries[name] = json.loads((out / "summary.json").read_text())
    return summaries


def loss_curve(run: Path, path: Path) -> Path:
    from tam_jax.evaluation.plots import line_chart, read_metrics

    metrics = run / "metrics.jsonl"
    # the video steps' terms (`train_video/` when SA-1B batches are mixed in, else `train/`),
    # and the image steps' total
    video = "train_video" if len(read_metrics(metrics, "train_video/loss")[0]) else "train"
    series = {}
    for key, name in ((f"{video}/loss", "total loss"), (f"{video}/loss_mask", "focal x20"),
                      (f"{video}/loss_dice", "dice"), (f"{video}/loss_iou", "IoU L1"),
                      (f"{video}/loss_class", "object score"),
                      (f"{video}/loss_readout", "memory readout (unweighted)"),
                      ("train_image/loss", "SA-1B steps: total loss")):
        steps, values = read_metrics(metrics, key)
        if len(steps):
            series[name] = (steps, values)
    return line_chart(series, path, xlabel="step", ylabel="loss", log_y=True,
                      title="demo training loss (video steps: summed over a clip's frames, "
                            "per object)")


def _scores(summary: dict) -> dict:
    s = summary["scores"]
    return {"J&F": s["J&F"], "J": s["J"], "F": s["F"],
            "frames_per_s": summary.get("frames_per_s")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--workdir", default="artifacts/demo", help="where everything is written")
    p.add_argument("--fresh", action="store_true", help="delete --workdir first")
    p.add_argument("--num_steps", type=int, default=0,
                   help="training steps (default: the config's)")
    p.add_argument("--config_arg", default="", help="argument of experiments/demo.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for training (repeatable)")
    p.add_argument("--train_shards", type=int, default=4, help="SA-V tars of 16 videos")
    p.add_argument("--image_shards", type=int, default=2,
                   help="SA-1B tars of 64 images (>= 1: the config trains on them)")
    p.add_argument("--eval_videos", type=int, default=16, help="held-out videos")
    p.add_argument("--frames", type=int, default=32, help="24 fps frames per video")
    # The objects are large, 46-77 px across: the demo's model decodes masks from its token
    # grid alone (EfficientTAM has no high-res features), 16 x 16 tokens of a 128 px frame
    # (8 x 8 until 2026-12-02). They still cross the frame in a video: copying the first mask
    # scores J&F ~0.11 on the held-out videos.
    p.add_argument("--object_size", type=float, nargs=2, default=(0.18, 0.3),
                   metavar=("LO", "HI"), help="object half-extents, fraction of the frame")
    p.add_argument("--object_speed", type=float, nargs=2, default=(0.3, 1.0),
                   metavar=("LO", "HI"), help="object travel per video, fraction of the frame")
    p.add_argument("--objects", type=int, default=3,
                   help="annotated objects per video (the training clips use up to 3)")
    p.add_argument("--distractors", type=int, default=1,
                   help="unannotated look-alikes per video (each copies an annotated object)")
    p.add_argument("--require_targets", action="store_true",
                   help="exit 1 when a J&F target is missed (default: report it, exit 0)")
    args = p.parse_args(argv)
    if args.image_shards < 1:
        p.error("--image_shards must be >= 1 (experiments/demo.py mixes SA-1B batches in)")

    t_start = time.perf_counter()
    work = Path(args.workdir)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    times = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        times[name] = round(time.perf_counter() - t, 1)
        print(f"  ({name}: {times[name]:.0f} s)", flush=True)
        return out

    _stage(1, f"synthetic SA-V and SA-1B data -> {work / 'raw'}")
    train_raw, held_out = timed("data", make_data, work, args)
    _stage(2, "prepare the training tars with the SA-V and SA-1B TFDS builders")
    tfds_dir = timed("prepare", prepare, work, train_raw)
    _stage(3, f"train ({CONFIG}) -> {work / 'run'}")
    run = timed("train", train, work, tfds_dir, args)

    from scripts.train import apply_overrides, load_config

    config = apply_overrides(load_config(f"{CONFIG}:{args.config_arg}"), args.set)
    variant = config.model.variant
    overrides = [(k, v) for k, v in config.model.overrides if k != "conv_impl"]
    _stage(4, f"evaluate on {args.eval_videos} held-out videos: trained / untrained / copy")
    summaries = timed("evaluate", evaluate, work, run, held_out, variant, overrides)
    _stage(5, "pictures")
    curve = loss_curve(run, work / "loss_curve.png")
    gifs = sorted((work / "eval" / "trained" / "overlays").glob("*.gif"))
    print(f"  {curve}\n  {len(gifs)} overlay GIFs in {work / 'eval' / 'trained' / 'overlays'}")

    _stage(6, "summary")
    scores = {name: _scores(summaries[name]) for name in TRACKERS}
    jf = {name: scores[name]["J&F"] for name in TRACKERS}
    met_jf = jf["trained"] >= TARGET_JF
    met_margin = jf["trained"] - jf["copy_first_mask"] >= TARGET_MARGIN
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    wall = time.perf_counter() - t_start
    print(f"\n  {'tracker':<18}{'J&F':>8}{'J':>8}{'F':>8}{'frames/s':>10}")
    for name in TRACKERS:
        s = scores[name]
        fps = f"{s['frames_per_s']:.1f}" if s["frames_per_s"] else "-"
        print(f"  {name:<18}{s['J&F']:>8.3f}{s['J']:>8.3f}{s['F']:>8.3f}{fps:>10}")
    print(f"\n  target: trained J&F >= {TARGET_JF}: {jf['trained']:.3f} "
          f"{'met' if met_jf else 'MISSED'}")
    print(f"  target: trained - copy >= {TARGET_MARGIN}: "
          f"{jf['trained'] - jf['copy_first_mask']:+.3f} {'met' if met_margin else 'MISSED'}")
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    print(f"  wall time {wall / 60:.1f} min ({stages}), peak memory {peak_mib:.0f} MiB")
    summary = {"scores": scores, "targets": {"jf": TARGET_JF, "margin": TARGET_MARGIN,
                                             "met_jf": met_jf, "met_margin": met_margin},
               "wall_s": round(wall, 1), "stage_s": times, "peak_rss_mib": round(peak_mib),
               "config": CONFIG, "config_arg": args.config_arg, "sets": args.set,
               "num_steps": int(config.train.num_steps) if not args.num_steps else args.num_steps,
               "loss_curve": str(curve), "gifs": [str(g) for g in gifs]}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"  wrote {work / 'summary.json'}")
    return 1 if args.require_targets and not (met_jf and met_margin) else 0


if __name__ == "__main__":
    sys.exit(main())
