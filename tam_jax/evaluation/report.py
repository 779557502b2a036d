"""Write a `ScoreReport`: per-object and per-video CSV, summary JSON, a printed table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from tam_jax.evaluation.metrics import SUMMARY_KEYS
from tam_jax.evaluation.score import ScoreReport

OBJECT_CSV = "per_object.csv"
VIDEO_CSV = "per_video.csv"
SUMMARY_JSON = "summary.json"


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    tmp.replace(path)


def summary_dict(report: ScoreReport, **context) -> dict:
    """The summary JSON: scores (fractions in [0, 1]), counts, skipped objects and `context`."""
    s = report.summary()
    return {
        "format": report.format,
        "scores": {k: (None if math.isnan(s[k]) else s[k]) for k in SUMMARY_KEYS},
        "num_objects": s["num_objects"],
        "num_videos": s["num_videos"],
        "missing_objects": [f"{v}/{o}" for v, o in report.missing_objects],
        "unscored_objects": [f"{v}/{o}" for v, o in report.unscored_objects],
        **context,
    }


def write_report(report: ScoreReport, out_dir, **context) -> dict[str, Path]:
    """Write per_object.csv, per_video.csv and summary.json into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [o.row() for o in report.objects]
    obj_cols = ["video", "object", "num_frames", "first_frame", *SUMMARY_KEYS]
    _write_csv(out / OBJECT_CSV, rows, obj_cols)
    _write_csv(out / VIDEO_CSV, report.video_rows(), ["video", "num_objects", "J&F", "J", "F"])
    tmp = out / (SUMMARY_JSON + ".tmp")
    tmp.write_text(json.dumps(summary_dict(report, **context), indent=2) + "\n")
    tmp.replace(out / SUMMARY_JSON)
    return {
        "per_object": out / OBJECT_CSV,
        "per_video": out / VIDEO_CSV,
        "summary": out / SUMMARY_JSON,
    }


def format_table(report: ScoreReport) -> str:
    """The summary as a two-line table in percent (as the SA-V and DAVIS papers print it)."""
    s = report.summary()
    head = "".join(f"{k:>10}" for k in SUMMARY_KEYS)
    vals = "".join(f"{100 * s[k]:>10.1f}" for k in SUMMARY_KEYS)
    return (
        f"{report.format} layout: {s['num_objects']} objects in {s['num_videos']} videos "
        f"(scores in %)\n{head}\n{vals}"
    )
