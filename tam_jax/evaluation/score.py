"""Score a folder of predicted masks against a ground-truth folder (SA-V or DAVIS layout).

The library side of `scripts/evaluate.py score`: walks the ground truth's videos, objects and
annotated frames (`io`), feeds the evaluated frames to per-object accumulators (`metrics`,
§4.1: first and last annotated frames skipped, objects counted from their first appearance,
only ground-truth objects reported) and collects the results in a `ScoreReport`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tam_jax.evaluation import io
from tam_jax.evaluation.metrics import (
    BOUND_TH,
    ObjectAccumulator,
    ObjectScores,
    aggregate,
    evaluated_frames,
)


@dataclass
class ScoreReport:
    """Everything `score_folders` found.

    objects: the reported objects, in video then object order.
    missing_objects: (video, object) pairs of the ground truth with no prediction at all
        (scored as empty masks).
    unscored_objects: (video, object) pairs whose ground truth is empty on every evaluated frame
        (not reported, as the SA-V evaluator; e.g. an object annotated on < 3 frames).
    """

    format: str
    objects: list[ObjectScores] = field(default_factory=list)
    missing_objects: list[tuple[str, str]] = field(default_factory=list)
    unscored_objects: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict:
        """`metrics.aggregate` over all objects of all videos."""
        return aggregate(self.objects)

    def video_rows(self) -> list[dict]:
        """One row per video: its object count and J&F / J / F averaged over its objects."""
        by_video: dict[str, list[ObjectScores]] = {}
        for o in self.objects:
            by_video.setdefault(o.video, []).append(o)
        rows = []
        for video, objs in by_video.items():
            j = float(np.mean([o.j_mean for o in objs]))
            f = float(np.mean([o.f_mean for o in objs]))
            rows.append(
                {"video": video, "num_objects": len(objs), "J&F": (j + f) / 2, "J": j, "F": f}
            )
        return rows


def score_sav_video(
    gt_root,
    pred_root,
    video: str,
    report: ScoreReport,
    *,
    skip_first_and_last: bool = True,
    bound_th: float = BOUND_TH,
) -> None:
    """Score every object folder of one SA-V-layout video into `report`."""
    for obj, frames in io.sav_object_frames(gt_root, video).items():
        if not io.has_sav_prediction(pred_root, video, obj):
            report.missing_objects.append((video, obj))
        acc = ObjectAccumulator(video, obj, bound_th)
        scored = evaluated_frames(frames, skip_first_and_last)
        for frame, pred, gt in io.iter_sav_object(gt_root, pred_root, video, obj, scored):
            acc.add(Path(frame).stem, pred, gt)
        _collect(acc, report)


def score_davis_video(
    gt_root,
    pred_root,
    video: str,
    report: ScoreReport,
    *,
    skip_first_and_last: bool = True,
    bound_th: float = BOUND_TH,
) -> None:
    """Score every object id of one DAVIS-layout video into `report`.

    An id gets an accumulator on the first evaluated frame where it appears in the ground truth
    or the prediction (ids accumulate, §4.1); only ids seen in the ground truth are reported.
    """
    accs: dict[int, ObjectAccumulator] = {}
    drawn: set[int] = set()
    scored = evaluated_frames(io.davis_frames(gt_root, video), skip_first_and_last)
    for frame, pred, gt in io.iter_davis_video(gt_root, pred_root, video, scored):
        pred_ids = set(np.unique(pred).tolist()) - {0}
        drawn |= pred_ids
        for i in sorted((set(np.unique(gt).tolist()) | pred_ids) - {0} - set(accs)):
            accs[i] = ObjectAccumulator(video, str(i), bound_th)
        for i, acc in accs.items():
            acc.add(Path(frame).stem, pred == i, gt == i)
    for i in sorted(accs):
        res = accs[i].result()
        if res is not None:
            report.objects.append(res)
            if i not in drawn:
                report.missing_objects.append((video, str(i)))


def _collect(acc: ObjectAccumulator, report: ScoreReport) -> None:
    res = acc.result()
    if res is None:
        report.unscored_objects.append((acc.video, acc.object_id))
    else:
        report.objects.append(res)


def score_folders(
    pred_dir,
    gt_dir,
    fmt: str = "auto",
    *,
    videos: Sequence[str] | None = None,
    skip_first_and_last: bool = True,
    bound_th: float = BOUND_TH,
    progress: bool = False,
) -> ScoreReport:
    """Score the predictions in `pred_dir` against the ground truth in `gt_dir`.

    fmt: 'sav', 'davis' or 'auto' (from the ground truth's first video). videos: the videos to
    score (default: every video folder of gt_dir); each needs a prediction folder, checked for
    all of them before any scoring (MissingPredictionError listing the missing ones). Prediction
    videos absent from the ground truth are ignored.
    """
    if fmt == "auto":
        fmt = io.detect_format(gt_dir)
    if fmt not in io.FORMATS:
        raise ValueError(f"format must be one of {io.FORMATS} or 'auto', got {fmt!r}")
    names = io.list_videos(gt_dir) if videos is None else list(videos)
    if not names:
        raise io.EvaluationInputError(f"{gt_dir}: no video folders to score")
    absent_gt = [v for v in names if not (Path(gt_dir) / v).is_dir()]
    if absent_gt:
        raise io.EvaluationInputError(f"{gt_dir}: no ground truth for videos {absent_gt}")
    missing = [v for v in names if not (Path(pred_dir) / v).is_dir()]
    if missing:
        raise io.MissingPredictionError(
            f"{pred_dir}: no prediction folder for {len(missing)} of {len(names)} videos: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    score_video = score_sav_video if fmt == "sav" else score_davis_video
    report = ScoreReport(format=fmt)
    from tqdm import tqdm

    for video in tqdm(names, desc=f"J&F ({fmt})", unit="video", disable=not progress):
        score_video(
            gt_dir,
            pred_dir,
            video,
            report,
            skip_first_and_last=skip_first_and_last,
            bound_th=bound_th,
        )
    return report
