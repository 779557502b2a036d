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

Subcommands are registered in SUBCOMMANDS; a `run` subcommand (track a checkpoint on a DAVIS /
SA-V / image folder, then score it) is planned and will be added beside `score`.
Exit code 0 on success, 2 on bad input (a missing prediction file, a malformed folder).
"""

from __future__ import annotations

import argparse
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


# One entry per subcommand: name -> function adding its parser (a `run` entry comes later).
SUBCOMMANDS = {"score": _add_score}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        help="(a `run` subcommand, tracking a checkpoint, is planned)",
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


if __name__ == "__main__":
    sys.exit(main())
