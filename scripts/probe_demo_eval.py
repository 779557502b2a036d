#!/usr/bin/env python
"""Probe where a tracker loses its objects: J and F per annotated frame, and the demo model
re-evaluated with a smaller memory.

    python scripts/probe_demo_eval.py per-frame --pred_dir artifacts/demo/eval/trained/predictions \
        --gt_dir artifacts/demo/raw/sav_val/Annotations_6fps
    python scripts/probe_demo_eval.py memory --checkpoint artifacts/demo/run \
        --data_dir artifacts/demo/raw/sav_val --num_maskmem 2 --max_obj_ptrs 3 --out /tmp/mm2
    python scripts/probe_demo_eval.py training-videos --out /tmp/trainval6 --frame_step 4

per-frame  J (IoU) and boundary F (the SA-V evaluator's `metrics.region_j` / `boundary_f`) of
           every object at every annotated frame of SA-V-layout predictions (per-object PNG
           folders, as `scripts/evaluate.py run` writes them), averaged over objects per frame
           index. The J&F of `evaluate.py` averages the same numbers over frames (first and
           last left out) and then objects; this shows *when* a tracker drifts: right after
           the prompt, or late in the video. --by_object: one table per object id, to see
           *which* object it loses (in the demo's videos, 001 leaves the frame and returns).
memory     the demo checkpoint (a training run directory, as `make demo` writes) tracked with
           `num_maskmem` memory frames (1 conditioning + num_maskmem - 1 recent) and at most
           `max_obj_ptrs` object pointers, instead of the trained 7 and 16. The temporal
           position table is cut to the rows those frames use (recent frame at distance d:
           row d - 1; the conditioning frame: the last row), so every frame reads the row
           it read in the full model. Asks: does evaluation reading memory slots that short
           training clips never filled (their rows left at their initial values) hurt?
training-videos
           the first --num_videos of the demo's SA-V *training* videos (the same render seeds
           as `make_synthetic_data.py --kinds sav`, so the same scenes the tars hold, as JPEG
           instead of H.264) written in the SA-V val layout, for `scripts/evaluate.py run`:
           does the model track what it trained on better than the held-out videos (it
           overfits), and does the predictor score what the training forward scores? With
           --frame_step 4 only the annotated frames are kept: the 6 fps spacing of training.

docs/benchmarks.md (`make demo`, probes of the seventh session) has what these found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def per_frame_scores(pred_root, gt_root, by_object: bool = False) -> dict:
    """{frame index: {"J": mean, "F": mean, "objects": count}} over every object of every video
    of an SA-V-layout ground truth (gt_root/<video>/<object>/<frame>.png) and predictions in the
    same layout. With `by_object`, {object folder name: that table} instead, each object id
    averaged over the videos (the demo's videos number their objects 000, 001, ... in the
    same roles: 001 is the one that leaves the frame and comes back). A missing prediction
    raises (`io.MissingPredictionError`, naming the file)."""
    from tam_jax.evaluation import io
    from tam_jax.evaluation.metrics import boundary_f, region_j

    pred_root, gt_root = Path(pred_root), Path(gt_root)
    sums: dict = {}
    for video in io.list_videos(gt_root):
        io.require_prediction_video(pred_root, video)
        for obj, frames in io.sav_object_frames(gt_root, video).items():
            for name in frames:
                # the scorer's own lookup: MissingPredictionError naming both files
                pred_path = io._pred_path(pred_root / video / obj, name, gt_root / video / obj)
                gt = io.read_binary_mask(gt_root / video / obj / name)
                pred = io.read_binary_mask(pred_path)
                t = int(Path(name).stem)
                acc = sums.setdefault((obj, t) if by_object else t, [0.0, 0.0, 0])
                acc[0] += region_j(pred, gt)
                acc[1] += boundary_f(pred, gt)
                acc[2] += 1
    table = {k: {"J": j / n, "F": f / n, "objects": n} for k, (j, f, n) in sorted(sums.items())}
    if not by_object:
        return table
    grouped: dict[str, dict[int, dict[str, float]]] = {}
    for (obj, t), row in table.items():
        grouped.setdefault(obj, {})[t] = row
    return grouped


def cut_temporal_table(tpos: np.ndarray, num_maskmem: int) -> np.ndarray:
    """A (num_maskmem_trained, 1, 1, C) `maskmem_tpos_enc` cut to (num_maskmem, 1, 1, C): rows
    0 .. num_maskmem - 2 (the recent frames at distance 1 .. num_maskmem - 1) and the last row
    (the conditioning frame), the rows those frames read in the full table."""
    n = tpos.shape[0]
    if not 1 <= num_maskmem <= n:
        raise ValueError(f"num_maskmem must be in [1, {n}] (the trained table), got {num_maskmem}")
    return np.concatenate([tpos[: num_maskmem - 1], tpos[n - 1:]], axis=0)


def _cut_params(params: dict, num_maskmem: int) -> dict:
    """params with every `maskmem_tpos_enc` leaf cut (a copy; the input is not changed)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out[k] = _cut_params(v, num_maskmem)
        elif k == "maskmem_tpos_enc":
            out[k] = cut_temporal_table(np.asarray(v), num_maskmem)
        else:
            out[k] = v
    return out


def _print_table(scores: dict, title: str = "") -> None:
    if title:
        print(title)
    print(f"{'frame':>6} {'objects':>8} {'J':>6} {'F':>6} {'J&F':>6}")
    for t, s in scores.items():
        print(f"{t:>6} {s['objects']:>8} {s['J']:>6.3f} {s['F']:>6.3f} "
              f"{(s['J'] + s['F']) / 2:>6.3f}")


def _per_frame(args) -> int:
    scores = per_frame_scores(args.pred_dir, args.gt_dir, by_object=args.by_object)
    if args.by_object:
        for obj, table in scores.items():
            _print_table(table, f"object {obj}")
        as_json = {obj: {str(t): s for t, s in table.items()} for obj, table in scores.items()}
    else:
        _print_table(scores)
        as_json = {str(t): s for t, s in scores.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(as_json, indent=1))
        print(f"wrote {args.json}")
    return 0


def _memory(args) -> int:
    from scripts.evaluate import _parse_override
    from tam_jax.evaluation.run import predictor_track_fn, run_videos
    from tam_jax.evaluation.weights import eval_config, load_eval_model
    from tam_jax.video_predictor import VideoPredictor

    overrides = dict(_parse_override(kv) for kv in args.override)
    trained, params = load_eval_model(args.checkpoint, args.variant, overrides)
    cut = {**overrides, "num_maskmem": args.num_maskmem,
           "max_obj_ptrs_in_encoder": args.max_obj_ptrs}
    cfg = eval_config(trained.name, cut)
    params = _cut_params(params, args.num_maskmem)
    print(f"{trained.name}: memory {trained.num_maskmem} frames / "
          f"{trained.max_obj_ptrs_in_encoder} pointers -> {cfg.num_maskmem} / "
          f"{cfg.max_obj_ptrs_in_encoder}")
    result = run_videos(predictor_track_fn(VideoPredictor(cfg, params, progress=False)),
                        args.data_dir, args.format, args.out, progress=not args.quiet,
                        context={"tracker": "model", "checkpoint": str(args.checkpoint),
                                 "variant": cfg.name, "overrides": cut})
    s = result.summary["scores"]
    print(f"J&F {s['J&F']:.3f}  J {s['J']:.3f}  F {s['F']:.3f}  ({args.out}/summary.json)")
    return 0


def _training_videos(args) -> int:
    from input_pipeline import synthetic

    scene = synthetic.SceneConfig(tuple(args.object_size), tuple(args.object_speed),
                                  args.distractors)
    videos, seeds = [], []
    for shard in range(-(-args.num_videos // args.per_shard)):
        ids, tar_seed = synthetic.train_shard_videos(shard, args.per_shard, args.seed)
        videos += [f"sav_{vid_num:06d}" for vid_num in ids]
        seeds += [synthetic.train_video_seed(tar_seed, vid_num) for vid_num in ids]
    videos, seeds = videos[:args.num_videos], seeds[:args.num_videos]
    synthetic.write_sav_eval_folder(args.out, videos, args.size, args.size, args.frames,
                                    args.objects, scene=scene, seeds=seeds,
                                    frame_step=args.frame_step)
    print(f"wrote {len(videos)} training videos to {args.out} (SA-V val layout); score a run on "
          f"them with: python scripts/evaluate.py run --checkpoint <run> --variant tiny_full "
          f"--override conv_impl=matmul --data_dir {args.out} --format sav --out <dir>")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    pf = sub.add_parser("per-frame", help="J and F per annotated frame index")
    pf.add_argument("--pred_dir", required=True, help="SA-V-layout predictions (per-object PNGs)")
    pf.add_argument("--gt_dir", required=True, help="SA-V-layout ground truth (Annotations_6fps)")
    pf.add_argument("--by_object", action="store_true",
                    help="one table per object id (folder name) instead of one for all")
    pf.add_argument("--json", help="also write the table here")
    pf.set_defaults(fn=_per_frame)
    mm = sub.add_parser("memory", help="re-evaluate with a smaller memory")
    mm.add_argument("--checkpoint", required=True, help="training run directory (or model dir)")
    mm.add_argument("--variant", default="tiny_full", help="the checkpoint's model variant")
    mm.add_argument("--override", action="append", default=["conv_impl=matmul"],
                    metavar="KEY=VALUE", help="model overrides the run trained with "
                    "(default: the demo's conv_impl=matmul)")
    mm.add_argument("--data_dir", required=True, help="held-out videos (SA-V val layout)")
    mm.add_argument("--format", default="sav", choices=("sav", "davis"))
    mm.add_argument("--num_maskmem", type=int, default=2,
                    help="memory frames: 1 conditioning + num_maskmem - 1 recent")
    mm.add_argument("--max_obj_ptrs", type=int, default=3, help="object pointers at most")
    mm.add_argument("--out", required=True, help="predictions, per-video CSV, summary.json")
    mm.add_argument("--quiet", action="store_true", help="no progress bar")
    mm.set_defaults(fn=_memory)
    tv = sub.add_parser("training-videos",
                        help="the demo's training videos in the SA-V val layout")
    tv.add_argument("--out", required=True, help="folder to write (SA-V val layout)")
    tv.add_argument("--num_videos", type=int, default=16)
    # the defaults are the demo's data options (scripts/demo.py): pass the same ones it used
    tv.add_argument("--seed", type=int, default=0, help="the training tars' --seed")
    tv.add_argument("--per_shard", type=int, default=16, help="videos per training tar")
    tv.add_argument("--frames", type=int, default=32, help="24 fps frames per video")
    tv.add_argument("--size", type=int, default=128, help="frame height and width")
    tv.add_argument("--objects", type=int, default=3)
    tv.add_argument("--distractors", type=int, default=1)
    tv.add_argument("--object_size", type=float, nargs=2, default=(0.18, 0.3))
    tv.add_argument("--object_speed", type=float, nargs=2, default=(0.3, 1.0))
    tv.add_argument("--frame_step", type=int, default=1, choices=(1, 4),
                    help="4: keep the annotated frames only (6 fps, renumbered)")
    tv.set_defaults(fn=_training_videos)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
