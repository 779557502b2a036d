"""Semi-supervised VOS metrics: region J, boundary F, per-object statistics, dataset means.

Every formula and edge case follows `docs/data_and_eval.md` §4.1 (the SA-V evaluator, which is
the DAVIS-2017 toolkit's J / F with SA-V's folder handling). numpy + OpenCV only, no jax.

Frame level (boolean masks of shape (H, W)):
    region_j(pred, gt)                 IoU; 1 when both masks are empty
    boundary_map(mask)                 the 1-px boundary B(X)
    boundary_f(pred, gt, bound_th)     boundary F-measure with disk dilation
Object level (the frames one object is scored on, in time order):
    ObjectAccumulator / video_scores   per-frame J and F from the object's first appearance on
    recall(values), decay(values)      the DAVIS extras (J-Recall, J-Decay, F-Recall, F-Decay)
Dataset level:
    aggregate(objects)                 means over all objects of all videos; J&F = (J + F) / 2

All scores are fractions in [0, 1] (the SA-V tool prints them x 100).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

BOUND_TH = 0.008  # §4.1: dilation radius = ceil(0.008 * image diagonal); >= 1 means pixels


def _as_mask(x, name: str) -> np.ndarray:
    m = np.asarray(x)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (H, W) mask, got shape {m.shape}")
    return m.astype(bool, copy=False)


def _same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")


# ---------------------------------------------------------------------------------- frame level


def region_j(pred, gt) -> float:
    """J = |P and G| / |P or G| of (H, W) masks (nonzero = foreground); 1.0 if both empty (§4.1)."""
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    _same_shape(p, g)
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return np.count_nonzero(p & g) / union


def boundary_map(mask) -> np.ndarray:
    """The 1-px boundary B(X) of an (H, W) mask, as a bool (H, W) map (§4.1, `seg2bmap`).

    b = X xor E | X xor S | X xor SE, where E / S / SE hold the neighbour at (0, +1) / (+1, 0) /
    (+1, +1) (0 outside the image). Edges: the last row is X xor E only, the last column is
    X xor S only, the bottom-right pixel is 0. The boundary therefore sits on the top-left side of
    an edge: a lone pixel at (i, j) gives (i-1, j-1), (i-1, j), (i, j-1), (i, j); a mask that fills
    the whole image has no boundary.
    """
    x = _as_mask(mask, "mask")
    e = np.zeros_like(x)
    s = np.zeros_like(x)
    se = np.zeros_like(x)
    e[:, :-1] = x[:, 1:]
    s[:-1, :] = x[1:, :]
    se[:-1, :-1] = x[1:, 1:]
    b = (x ^ e) | (x ^ s) | (x ^ se)
    b[-1, :] = x[-1, :] ^ e[-1, :]
    b[:, -1] = x[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary_radius(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels: ceil(bound_th * sqrt(H^2 + W^2)), or bound_th itself if >= 1.

    480x854 -> 8, 720x1280 -> 12, 1024x1024 -> 12, 1080x1920 -> 18 (§4.1).
    """
    if bound_th >= 1:
        return int(math.ceil(bound_th))
    h, w = int(shape[0]), int(shape[1])
    # sqrt of the exact integer sum: the same double as np.linalg.norm((H, W)).
    return int(math.ceil(bound_th * math.sqrt(h * h + w * w)))


@functools.lru_cache(maxsize=16)
def disk(radius: int) -> np.ndarray:
    """The (2r+1, 2r+1) uint8 disk {(y, x): y^2 + x^2 <= r^2}, as skimage.morphology.disk(r)."""
    r = int(radius)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    k = (x * x + y * y <= r * r).astype(np.uint8)
    k.flags.writeable = False
    return k


def boundary_precision_recall(pred, gt, bound_th: float = BOUND_TH) -> tuple[float, float]:
    """Boundary precision and recall of (H, W) masks (§4.1).

    precision = sum(B(P) * Dil(B(G))) / sum(B(P)), recall = sum(B(G) * Dil(B(P))) / sum(B(G)),
    Dil = cv2.dilate with disk(boundary_radius). Empty boundaries (§4.1 table):
    B(P) empty, B(G) not -> (1, 0); B(G) empty, B(P) not -> (0, 1); both empty -> (1, 1).
    """
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    _same_shape(p, g)
    bp, bg = boundary_map(p), boundary_map(g)
    n_p, n_g = np.count_nonzero(bp), np.count_nonzero(bg)
    if n_p == 0 and n_g == 0:
        return 1.0, 1.0
    if n_p == 0:
        return 1.0, 0.0
    if n_g == 0:
        return 0.0, 1.0
    kernel = disk(boundary_radius(p.shape, bound_th))
    dil_p = cv2.dilate(bp.view(np.uint8), kernel).view(bool)
    dil_g = cv2.dilate(bg.view(np.uint8), kernel).view(bool)
    precision = np.count_nonzero(bp & dil_g) / n_p
    recall = np.count_nonzero(bg & dil_p) / n_g
    return precision, recall


def boundary_f(pred, gt, bound_th: float = BOUND_TH) -> float:
    """Boundary F = 2PR / (P + R), 0 when P + R = 0 (§4.1); (H, W) masks."""
    precision, recall = boundary_precision_recall(pred, gt, bound_th)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------- object level


def recall(values, threshold: float = 0.5) -> float:
    """DAVIS recall: the fraction of per-frame values strictly above `threshold` (§4.1)."""
    v = np.asarray(values, np.float64)
    return float(np.mean(v > threshold)) if v.size else math.nan


def decay(values, n_bins: int = 4) -> float:
    """DAVIS decay: mean of the first bin minus mean of the last bin of per-frame values (§4.1).

    Bin edges (0-based) are round(linspace(1, n, n_bins + 1)) - 1 with halves rounded up, and
    bin i spans edges[i] .. edges[i + 1] inclusive (neighbouring bins share an edge frame), so
    no bin is empty for n >= 1. n = 10: edges 0, 2, 5, 7, 9 -> mean(v[0:3]) - mean(v[7:10]).
    (The DAVIS toolkit stores the edges as uint8, which wraps past 256 frames; we do not.)
    """
    v = np.asarray(values, np.float64)
    n = v.size
    if n == 0:
        return math.nan
    edges = np.floor(np.linspace(1, n, n_bins + 1) + 0.5).astype(np.int64) - 1
    first = v[edges[0] : edges[1] + 1]
    last = v[edges[-2] : edges[-1] + 1]
    return float(first.mean() - last.mean())


@dataclass(frozen=True)
class ObjectScores:
    """Per-frame J and F of one object of one video over its scored frames.

    j, f: (N,) float64, one value per scored frame (the names in `frames`).
    """

    video: str
    object_id: str
    frames: tuple[str, ...]
    j: np.ndarray
    f: np.ndarray

    @property
    def j_mean(self) -> float:
        return float(self.j.mean())

    @property
    def f_mean(self) -> float:
        return float(self.f.mean())

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2

    def row(self) -> dict:
        """One CSV row: identifiers, frame count and the seven statistics."""
        return {
            "video": self.video,
            "object": self.object_id,
            "num_frames": len(self.frames),
            "first_frame": self.frames[0],
            "J&F": self.jf_mean,
            "J": self.j_mean,
            "F": self.f_mean,
            "J-Recall": recall(self.j),
            "J-Decay": decay(self.j),
            "F-Recall": recall(self.f),
            "F-Decay": decay(self.f),
        }


class ObjectAccumulator:
    """Collects J and F of one object frame by frame (the frames to score, in time order).

    As the SA-V evaluator: a frame counts from the object's first appearance on, that is the first
    fed frame where the ground truth or the prediction is non-empty (earlier frames, empty in both,
    are skipped; later frames empty in both count J = F = 1). An object whose ground truth is empty
    on every fed frame is not reported: `result()` is None. Feed only the evaluated frames (the
    caller drops the first and last annotated frames, §4.1).
    """

    def __init__(self, video: str, object_id: str, bound_th: float = BOUND_TH):
        self.video, self.object_id, self.bound_th = video, object_id, bound_th
        self._frames: list[str] = []
        self._j: list[float] = []
        self._f: list[float] = []
        self._in_gt = False

    def add(self, frame: str, pred, gt) -> None:
        """Score one frame; pred, gt: (H, W) masks (nonzero = object)."""
        p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
        _same_shape(p, g)
        g_any = bool(g.any())
        if not self._frames and not g_any and not p.any():
            return  # before the first appearance
        self._in_gt |= g_any
        self._frames.append(frame)
        self._j.append(region_j(p, g))
        self._f.append(boundary_f(p, g, self.bound_th))

    def result(self) -> ObjectScores | None:
        if not self._in_gt:
            return None
        return ObjectScores(
            self.video,
            self.object_id,
            tuple(self._frames),
            np.asarray(self._j, np.float64),
            np.asarray(self._f, np.float64),
        )


def evaluated_frames(frames: Sequence, skip_first_and_last: bool = True) -> list:
    """The annotated frames that are scored: all but the first and the last (§4.1)."""
    frames = list(frames)
    return frames[1:-1] if skip_first_and_last else frames


def video_scores(
    pred_masks: Mapping[str, np.ndarray],
    gt_masks: Mapping[str, np.ndarray],
    *,
    video: str = "",
    frames: Mapping[str, Sequence[str]] | None = None,
    skip_first_and_last: bool = True,
    bound_th: float = BOUND_TH,
) -> list[ObjectScores]:
    """Score the objects of one video from in-memory masks.

    gt_masks[obj]: (T_obj, H, W) masks on that object's T_obj annotated frames, in time order;
    pred_masks[obj]: the same shape on the same frames. A ground-truth object without a
    prediction scores against empty masks (as the DAVIS toolkit); predicted objects absent from
    the ground truth are ignored. The first and last annotated frames are dropped, then each object
    is scored from its first appearance (`ObjectAccumulator`); objects whose ground truth is empty
    on every evaluated frame are not reported. frames[obj] names the T_obj frames (default
    "0", "1", ...). Returns one ObjectScores per reported object, in gt_masks order.
    """
    out = []
    for obj, gt in gt_masks.items():
        gt = np.asarray(gt)
        if gt.ndim != 3:
            raise ValueError(f"gt_masks[{obj!r}]: expected (T, H, W), got shape {gt.shape}")
        pred = pred_masks.get(obj)
        pred = np.zeros(gt.shape, bool) if pred is None else np.asarray(pred)
        if pred.shape != gt.shape:
            raise ValueError(
                f"object {obj!r}: prediction shape {pred.shape} != ground truth {gt.shape}"
            )
        names = [str(i) for i in range(len(gt))] if frames is None else list(frames[obj])
        if len(names) != len(gt):
            raise ValueError(f"object {obj!r}: {len(names)} frame names for {len(gt)} masks")
        acc = ObjectAccumulator(video, str(obj), bound_th)
        for t in evaluated_frames(range(len(gt)), skip_first_and_last):
            acc.add(names[t], pred[t], gt[t])
        if (res := acc.result()) is not None:
            out.append(res)
    return out


# -------------------------------------------------------------------------------- dataset level

SUMMARY_KEYS = ("J&F", "J", "F", "J-Recall", "J-Decay", "F-Recall", "F-Decay")


def aggregate(objects: Sequence[ObjectScores]) -> dict:
    """Dataset scores: each statistic averaged over all objects of all videos (§4.1).

    J = mean_o J_o, F = mean_o F_o, J&F = (J + F) / 2 (an object-level, not a per-video mean);
    J-Recall / J-Decay / F-Recall / F-Decay are the per-object DAVIS statistics averaged over
    objects. Also returns num_objects and num_videos. NaN statistics when there is no object.
    """
    rows = [o.row() for o in objects]
    summary = {}
    for key in ("J", "F", "J-Recall", "J-Decay", "F-Recall", "F-Decay"):
        summary[key] = float(np.mean([r[key] for r in rows])) if rows else math.nan
    summary["J&F"] = (summary["J"] + summary["F"]) / 2
    summary = {k: summary[k] for k in SUMMARY_KEYS}
    summary["num_objects"] = len(rows)
    summary["num_videos"] = len({o.video for o in objects})
    return summary
