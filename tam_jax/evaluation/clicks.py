"""Promptable image segmentation: RITM "center" click simulation and mIoU after N clicks.

The protocol of SAM / SAM 2 (docs/data_and_eval.md §4.2, with the click rule of §3.3
"Eval center"): click 1 is the deepest point of the ground-truth mask; click k > 1 is the deepest
point of the larger error region of the previous prediction, positive (label 1) in the false
negatives, negative (label 0) in the false positives; each click is appended to the earlier ones
and the previous mask logits are fed back. numpy + OpenCV only; the model enters through the
caller's `predict_fn`.

Points are (x, y) integer pixel indices (column, row) of the ground-truth mask, as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np

from tam_jax.evaluation.metrics import region_j

# predict_fn(points (N, 2) float32 xy, labels (N,) int32, prev_logits | None) -> (mask, logits)
PredictFn = Callable[[np.ndarray, np.ndarray, object], tuple[np.ndarray, object]]


def distance_to_background(mask, padding: bool = True) -> np.ndarray:
    """Euclidean distance of each pixel of an (H, W) mask to the nearest background pixel.

    cv2.distanceTransform(DIST_L2, maskSize 0 = exact) on the mask padded by 1 px of background,
    so the image border counts as background (§3.3). Returns float32 (H, W); 0 off the mask.
    """
    m = np.asarray(mask, bool).astype(np.uint8)
    if padding:
        m = np.pad(m, 1)
    dt = cv2.distanceTransform(m, cv2.DIST_L2, 0)
    return dt[1:-1, 1:-1] if padding else dt


def error_center_click(gt, pred=None, padding: bool = True) -> tuple[np.ndarray, int]:
    """The next RITM "center" click for an (H, W) ground truth and the current (H, W) prediction.

    FN = gt and not pred, FP = pred and not gt. The click is the first (row-major) argmax of the
    distance transform of FN if its maximum is strictly larger than FP's (label 1), else the
    argmax of FP's (label 0) (§3.3 "Eval center", SAM 2's sample_one_point_from_error_center).
    pred None means an empty prediction, so the first click is the deepest point of the mask.
    As the official rule, a perfect prediction yields a negative click at (0, 0).
    Returns (point (2,) float32 (x, y), label).
    """
    g = np.asarray(gt, bool)
    p = np.zeros_like(g) if pred is None else np.asarray(pred, bool)
    if g.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"expected (H, W) masks of one shape, got {g.shape} and {p.shape}")
    dt_fn = distance_to_background(g & ~p, padding).ravel()
    dt_fp = distance_to_background(p & ~g, padding).ravel()
    i_fn, i_fp = int(np.argmax(dt_fn)), int(np.argmax(dt_fp))
    positive = bool(dt_fn[i_fn] > dt_fp[i_fp])
    idx = i_fn if positive else i_fp
    y, x = divmod(idx, g.shape[1])
    return np.array([x, y], np.float32), int(positive)


def click_ious(predict_fn: PredictFn, gt, max_clicks: int) -> np.ndarray:
    """IoU with `gt` (H, W) after each of clicks 1..max_clicks; returns (max_clicks,) float64.

    predict_fn(points (N, 2) float32 xy, labels (N,) int32, prev_logits) -> (mask (H, W), logits)
    is called once per click with all clicks so far; prev_logits is None on the first call, then
    the logits it returned last (fed back as the mask prompt). Mask selection is the caller's job:
    SAM's protocol takes the highest predicted-IoU mask of the multimask output for 1 click and
    the single-mask output for >= 2 clicks (§4.2).
    """
    g = np.asarray(gt, bool)
    if not g.any():
        raise ValueError("click simulation needs a non-empty ground-truth mask")
    points = np.zeros((0, 2), np.float32)
    labels = np.zeros((0,), np.int32)
    pred, logits = None, None
    ious = []
    for _ in range(max_clicks):
        point, label = error_center_click(g, pred)
        points = np.concatenate([points, point[None]])
        labels = np.concatenate([labels, np.array([label], np.int32)])
        mask, logits = predict_fn(points, labels, logits)
        pred = np.asarray(mask, bool)
        if pred.shape != g.shape:
            raise ValueError(f"predict_fn returned a mask of shape {pred.shape}, gt is {g.shape}")
        ious.append(region_j(pred, g))
    return np.asarray(ious, np.float64)


def miou_at_clicks(
    predict_fn: PredictFn, gt_masks: Iterable, n_clicks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """mIoU after N clicks for each N in n_clicks: the mean over masks of the IoU after N clicks.

    gt_masks: an iterable of (H, W) non-empty masks, consumed one at a time: a generator may set
    the image predict_fn works on before it yields that image's masks. Each mask gets
    max(n_clicks) iterative clicks (`click_ious`). For 1 click the caller's predict_fn should
    return the highest predicted-IoU mask of the model's multimask output (SAM's default; §4.2).
    Returns {N: mIoU}.
    """
    n_clicks = sorted({int(n) for n in n_clicks})
    if not n_clicks or n_clicks[0] < 1:
        raise ValueError(f"n_clicks must be positive integers, got {n_clicks}")
    per_mask = np.array([click_ious(predict_fn, g, n_clicks[-1]) for g in gt_masks])
    if per_mask.size == 0:
        raise ValueError("miou_at_clicks: no ground-truth masks")
    return {n: float(per_mask[:, n - 1].mean()) for n in n_clicks}
