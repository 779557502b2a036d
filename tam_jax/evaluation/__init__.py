"""Evaluation: VOS J&F (SA-V / DAVIS-2017 definitions) and click-based image mIoU.

numpy + OpenCV only (no jax). docs/data_and_eval.md §4 holds the formulas.

    metrics   region_j, boundary_map, boundary_f, ObjectAccumulator, video_scores, aggregate
    clicks    error_center_click (RITM "center"), click_ious, miou_at_clicks
    io        SA-V / DAVIS folder readers with errors naming the missing file
    score     score_folders: a prediction folder vs a ground-truth folder -> ScoreReport
    report    per-object / per-video CSV, summary JSON, printed table
"""

from tam_jax.evaluation.clicks import click_ious, error_center_click, miou_at_clicks
from tam_jax.evaluation.metrics import (
    ObjectAccumulator,
    ObjectScores,
    aggregate,
    boundary_f,
    boundary_map,
    boundary_precision_recall,
    decay,
    recall,
    region_j,
    video_scores,
)
from tam_jax.evaluation.score import ScoreReport, score_folders

__all__ = [
    "ObjectAccumulator",
    "ObjectScores",
    "ScoreReport",
    "aggregate",
    "boundary_f",
    "boundary_map",
    "boundary_precision_recall",
    "click_ious",
    "decay",
    "error_center_click",
    "miou_at_clicks",
    "recall",
    "region_j",
    "score_folders",
    "video_scores",
]
