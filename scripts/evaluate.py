#!/usr/bin/env python
"""Evaluate video object segmentation: J, F and J&F as the SA-V and DAVIS-2017 evaluators.

  python scripts/evaluate.py score --pred_dir P --gt_dir G [--format sav|davis|auto]
                                   [--out DIR] [--videos LIST.txt] [--quiet]
      Scores existing predictions of any tracker against a ground-truth folder:
        sav    <dir>/<video>/<obj>/<frame>.png   one binary PNG per object (value > 0)
        davis  <dir>/<video>/<frame>.png         one palette PNG per frame (ids 1..K)
        auto   decided from the ground truth's first video (default)
      The ground truth decides the videos, objects and frames. The first and last annotated
      frames are not scored; a prediction PNG must exist for every other annotated frame; a
      ground-truth object the prediction lacks entirely scores as empty masks.
      Writes per_object.csv, per_video.csv and summary.json into --out (default: --pred_dir),
      all scores as fractions in [0, 1], and prints the summary table in percent:
      J&F, J, F and the DAVIS extras J-Recall, J-Decay, F-Recall, F-Decay.

  python scripts/evaluate.py run --checkpoint C [--variant V] --data_dir D
                                 --format davis|sav|sa1b-images --out O [--max_videos N]
                                 [--overlays [--gif | --mp4]] [--baseline copy_first_mask]
      Runs a model and scores it. C: an official .pt, a tam_jax model directory, a training
      workdir (or its checkpoints/ folder: the latest step's params), or `none` (random
      weights). --variant is needed for `none` and training checkpoints (--override KEY=VALUE
      for a modified variant, e.g. --override vit.depth=2).
        davis / sav   every object is prompted with its first ground-truth mask and tracked
                      through the video; predictions go to O/predictions/ in the ground
                      truth's layout and are scored as `score` does (O/per_object.csv,
                      O/per_video.csv, O/summary.json). --overlays: O/overlays/<video>/<n>.png
                      per frame and O/overlays/<video>.gif (or .mp4).
        sa1b-images   sa_<id>.jpg + sa_<id>.json: 1-click and 5-click mIoU with the image
                      predictor (O/per_image.csv, O/summary.json).
      --baseline copy_first_mask scores "copy the first mask to every frame" instead of a
      model (no checkpoint needed).

Subcommands are registered in SUBCOMMANDS.
Exit code 0 on success, 2 on bad input (a missing prediction file, a malformed folder).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tam_jax.evaluation import io  # noqa: E402
from tam_jax.evaluation.metrics import BOUND_TH  # noqa: E402
from tam_jax.evaluation.report import format_table, write_report  # noqa: E402
from tam_jax.evaluation.score import score_folders  # noqa: E402


def _read_video_list(path: str) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def _score(args) -> int:
    videos = _read_video_list(args.videos) if args.videos else None
    report = score_folders(
        args.pred_dir,
        args.gt_dir,
        args.format,
        videos=videos,
        skip_first_and_last=not args.keep_first_and_last,
        bound_th=args.bound_th,
        progress=not args.quiet,
    )
    out = args.out or args.pred_dir
    paths = write_report(
        report,
        out,
        pred_dir=str(args.pred_dir),
        gt_dir=str(args.gt_dir),
        skip_first_and_last=not args.keep_first_and_last,
        bound_th=args.bound_th,
    )
    if report.missing_objects:
        shown = ", ".join(f"{v}/{o}" for v, o in report.missing_objects[:5])
        print(
            f"note: {len(report.missing_objects)} ground-truth object(s) without any prediction "
            f"(scored as empty): {shown}{' ...' if len(report.missing_objects) > 5 else ''}"
        )
    if report.unscored_objects:
        print(
            f"note: {len(report.unscored_objects)} object(s) empty on every evaluated frame "
            "are not scored (see summary.json)"
        )
    print(format_table(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score existing prediction PNGs against ground truth (SA-V / DAVIS layout)",
        description="Score existing prediction PNGs against a ground-truth folder.",
    )
    p.add_argument("--pred_dir", required=True, help="predictions, same layout as --gt_dir")
    p.add_argument(
        "--gt_dir",
        required=True,
        help="ground truth, e.g. sav_val/Annotations_6fps or DAVIS/Annotations/480p",
    )
    p.add_argument(
        "--format",
        choices=("auto", *io.FORMATS),
        default="auto",
        help="folder layout (default: detected from --gt_dir)",
    )
    p.add_argument(
        "--out",
        help="output folder for the CSVs and summary.json "
        "(default: --pred_dir, as the SA-V evaluator)",
    )
    p.add_argument(
        "--videos",
        help="text file of video names to score, one per line "
        "(e.g. sav_val.txt; default: every video in --gt_dir)",
    )
    p.add_argument(
        "--keep_first_and_last",
        action="store_true",
        help="also score the first and last annotated frames (not the standard)",
    )
    p.add_argument(
        "--bound_th",
        type=float,
        default=BOUND_TH,
        help="boundary tolerance: fraction of the image diagonal, or pixels if >= 1",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_score)


def _parse_override(pair: str) -> tuple[str, object]:
    key, sep, raw = pair.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {pair!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _run(args) -> int:
    import json

    baseline = args.baseline is not None
    if args.format == "sa1b-images" and baseline:
        raise SystemExit("--baseline is for video formats (davis, sav)")
    if not baseline and args.checkpoint is None:
        raise SystemExit("run needs --checkpoint (a .pt, a model or training dir, or none)")
    out = Path(args.out)
    videos = _read_video_list(args.videos) if args.videos else None
    common = {"progress": not args.quiet}
    if baseline:
        from tam_jax.evaluation.run import copy_first_mask_track_fn, run_videos

        result = run_videos(
            copy_first_mask_track_fn,
            args.data_dir,
            args.format,
            out,
            overlays=args.overlays,
            animation=args.animation,
            videos=videos,
            max_videos=args.max_videos,
            context={"tracker": args.baseline},
            **common,
        )
        return _print_video_result(result)
    from tam_jax.evaluation.weights import is_random, load_eval_model

    cfg, params = load_eval_model(args.checkpoint, args.variant, dict(args.override))
    context = {
        "tracker": "model",
        "checkpoint": "none" if is_random(args.checkpoint) else str(args.checkpoint),
        "variant": cfg.name,
        "overrides": {k: v for k, v in args.override},
    }
    print(f"model {cfg.name} ({context['checkpoint']}), image size {cfg.image_size}")
    if args.format == "sa1b-images":
        from tam_jax.evaluation.image_eval import evaluate_images, format_image_table
        from tam_jax.predictors import ImagePredictor

        summary = evaluate_images(
            ImagePredictor(cfg, params),
            args.data_dir,
            out,
            max_images=args.max_videos,
            max_masks=args.max_masks,
            context=context,
            **common,
        )
        print(format_image_table(summary))
        print(f"wrote {out / 'per_image.csv'}, {out / 'summary.json'}")
        print(json.dumps(summary["scores"]))
        return 0
    from tam_jax.evaluation.run import predictor_track_fn, run_videos
    from tam_jax.video_predictor import VideoPredictor

    predictor = VideoPredictor(cfg, params, progress=False)
    result = run_videos(
        predictor_track_fn(predictor),
        args.data_dir,
        args.format,
        out,
        overlays=args.overlays,
        animation=args.animation,
        videos=videos,
        max_videos=args.max_videos,
        context=context,
        **common,
    )
    return _print_video_result(result)


def _print_video_result(result) -> int:
    print(format_table(result.report))
    fps = result.summary.get("frames_per_s")
    print(f"tracked {result.summary['frames']} frames" + (f" at {fps:.2f} frames/s" if fps else ""))
    print("wrote " + ", ".join(str(p) for p in result.paths.values()))
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a checkpoint (or a baseline) on a DAVIS / SA-V / SA-1B-style folder, score it",
        description="Track (or click-segment) a dataset folder with a model, write and score "
        "the masks.",
    )
    p.add_argument(
        "--checkpoint",
        help="official .pt, tam_jax model dir, training workdir / "
        "checkpoints dir, or `none` (random weights)",
    )
    p.add_argument(
        "--variant",
        help="model variant (e.g. efficienttam_s, tiny); inferred for .pt files and model dirs",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        type=_parse_override,
        metavar="KEY=VALUE",
        help="dotted model config override; repeatable",
    )
    p.add_argument("--data_dir", required=True, help="dataset root (see the layouts above)")
    p.add_argument("--format", required=True, choices=("davis", "sav", "sa1b-images"))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max_videos", type=int, help="only the first N videos (images)")
    p.add_argument("--videos", help="text file of video names, one per line (default: all)")
    p.add_argument("--max_masks", type=int, help="sa1b-images: the first N masks per image")
    p.add_argument(
        "--overlays",
        action="store_true",
        help="write overlay PNGs per frame and an animation per video",
    )
    anim = p.add_mutually_exclusive_group()
    anim.add_argument(
        "--gif",
        dest="animation",
        action="store_const",
        const="gif",
        help="animation as GIF (default)",
    )
    anim.add_argument(
        "--mp4",
        dest="animation",
        action="store_const",
        const="mp4",
        help="animation as H.264 MP4 (needs PyAV)",
    )
    p.add_argument(
        "--baseline", choices=("copy_first_mask",), help="score a baseline instead of a model"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_run, animation="gif")


# One entry per subcommand: name -> function adding its parser.
SUBCOMMANDS = {"score": _add_score, "run": _add_run}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        help="score: existing predictions; run: a checkpoint on a dataset folder",
    )
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (io.EvaluationInputError, io.MissingPredictionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # a checkpoint that does not fit, an unreadable video
        from tam_jax.checkpointing import CheckpointError
        from tam_jax.convert.checkpoint import ConversionError
        from tam_jax.video_io import VideoInputError

        if not isinstance(err, CheckpointError | ConversionError | VideoInputError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
