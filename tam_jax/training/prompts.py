"""SAM 2's prompt simulation for training (data_and_eval.md §3.3; `SAM2Train`).

Two halves, split by what may change shapes:

* the **plan** of a step (`sample_plan`, host side, numpy): whether the initial prompts are
  points or the GT mask, how many initial conditioning frames (1 or 2) and which, box or click
  on each, which extra frames get correction clicks. SAM 2 draws these from one
  `np.random.default_rng` held by the model, identical on every GPU, so the whole global batch
  shares them; here they come from (seed, step), identical on every host and exactly
  reproducible on resume. The choices that change shapes (prompt kinds, number of initial
  conditioning frames) are static (`PlanKind`: one compiled step per kind); frame positions
  are arrays.
* the **pixels** (`initial_click`, `noisy_box`, `correction_click`, on device, `jax.random`):
  uniform clicks from the GT mask or from the error region, noisy boxes; static shapes.

Points are (x, y) pixel indices of the model-input image (0 .. S-1, as floats), which the
prompt encoder shifts to pixel centres; labels 1 positive, 0 negative, 2 / 3 box corners.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """SAM 2's training values (`sam2.1_hiera_b+_MOSE_finetune.yaml`, paper Table 13)."""

    prob_point_input: float = 0.5  # else the GT mask prompts the initial conditioning frames
    prob_box_input: float = 0.5  # given point input: a box instead of a click
    num_init_cond_frames: int = 2  # drawn uniformly from 1 .. this (rand_init_cond_frames)
    num_frames_to_correct: int = 2  # drawn from num_init_cond .. this (rand_frames_to_correct)
    num_correction_points: int = 7  # correction clicks per corrected frame
    prob_sample_from_gt: float = 0.1  # a correction click drawn from the GT mask instead
    box_noise: float = 0.1  # box corner noise: fraction of the box side ...
    box_noise_bound: float = 20.0  # ... at most this many pixels

    def __post_init__(self):
        for name in ("prob_point_input", "prob_box_input", "prob_sample_from_gt"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PromptConfig.{name} must be in [0, 1]: {self}")
        if self.num_init_cond_frames < 1 or self.num_frames_to_correct < 1:
            raise ValueError(f"PromptConfig: frame counts must be >= 1: {self}")
        if self.num_correction_points < 0:
            raise ValueError(f"PromptConfig.num_correction_points must be >= 0: {self}")


@dataclasses.dataclass(frozen=True)
class PlanKind:
    """The static part of a step's prompt plan (hashable: one compiled train step per kind).

    point_input: clicks / boxes (with corrections) on the initial conditioning frames, else
    GT masks (no corrections anywhere). init_prompts: per initial conditioning frame, "click",
    "box" or "mask". corrections: correction clicks per corrected frame (0 with mask input).
    """

    point_input: bool
    init_prompts: tuple[str, ...]
    corrections: int

    @property
    def num_init_cond(self) -> int:
        return len(self.init_prompts)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A step's prompt plan for clips of T frames.

    order (T,) int32: frames in processing order (initial conditioning frames first, frame 0
    first of all, then the others in increasing order); corrected (T,) bool: per position in
    `order`, whether that frame gets correction clicks (and so becomes a conditioning frame).
    """

    kind: PlanKind
    order: np.ndarray
    corrected: np.ndarray


def sample_plan(cfg: PromptConfig, num_frames: int, rng: np.random.Generator) -> Plan:
    """One step's plan, drawn in SAM 2's order of draws. Images (T = 1): point input is forced,
    one conditioning frame, which is also the one corrected frame."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    prob_pt, n_correct, n_init = cfg.prob_point_input, cfg.num_frames_to_correct, \
        cfg.num_init_cond_frames
    if num_frames == 1:
        prob_pt, n_correct, n_init = 1.0, 1, 1
    n_init = min(n_init, num_frames)
    use_pt = bool(rng.random() < prob_pt)
    if n_init > 1:
        n_init = int(rng.integers(1, n_init, endpoint=True))
    n_correct = min(n_correct, num_frames)
    if use_pt and n_correct > n_init:
        n_correct = int(rng.integers(n_init, n_correct, endpoint=True))
    init = [0]
    if n_init > 1:
        init += sorted(int(t) for t in rng.choice(np.arange(1, num_frames), n_init - 1,
                                                   replace=False))
    rest = [t for t in range(num_frames) if t not in init]
    prompts = []
    for _ in init:
        if not use_pt:
            prompts.append("mask")
        else:
            prompts.append("box" if rng.random() < cfg.prob_box_input else "click")
    corrected_frames = set(init) if use_pt else set()
    if use_pt and n_correct > n_init:
        corrected_frames |= {int(t) for t in rng.choice(rest, n_correct - n_init, replace=False)}
    order = np.asarray(init + rest, np.int32)
    corrected = np.asarray([int(t) in corrected_frames for t in order], bool)
    kind = PlanKind(point_input=use_pt, init_prompts=tuple(prompts),
                    corrections=cfg.num_correction_points if use_pt else 0)
    return Plan(kind=kind, order=order, corrected=corrected)


def plan_rng(seed: int, step: int) -> np.random.Generator:
    """The host rng of one step's plan: the same on every host, reproducible on resume."""
    return np.random.default_rng([seed, step, 0x7A4])


# ----------------------------------------------------------------------------- pixels

def _flat_to_xy(idx_n: jax.Array, width: int) -> jax.Array:
    """Flat pixel indices (N,) -> (N, 1, 2) float (x, y)."""
    return jnp.stack([idx_n % width, idx_n // width], axis=-1)[:, None].astype(jnp.float32)


def correction_click(key: jax.Array, gt_nhw: jax.Array, pred_nhw: jax.Array | None):
    """One click per object, uniform over the error region (SAM 2's "uniform" sampling).

    gt, pred (N, H, W) bool; pred None = an empty prediction (then the click is a uniform
    pixel of the GT mask: the initial click). False negatives give positive clicks (label 1),
    false positives negative ones (label 0). A perfect prediction gives a negative click on
    the background; with no candidate at all (a perfect all-foreground prediction) the click
    is pixel (0, 0), negative, as SAM 2's argmax over all-zero noise gives.
    Returns points (N, 1, 2) float32 (x, y) and labels (N, 1) int32.
    """
    n, h, w = gt_nhw.shape
    gt = gt_nhw.astype(bool)
    pred = jnp.zeros_like(gt) if pred_nhw is None else pred_nhw.astype(bool)
    fp, fn = pred & ~gt, gt & ~pred
    all_correct = ~jnp.any((gt != pred).reshape(n, -1), axis=1)[:, None, None]  # (N, 1, 1)
    negative = fp | (all_correct & ~gt)
    candidate = (negative | fn).reshape(n, h * w)
    # argmax of uniform noise over the candidates = a uniform candidate
    noise = jax.random.uniform(key, (n, h * w))
    idx = jnp.argmax(jnp.where(candidate, noise, -1.0), axis=1)  # (N,); 0 if none
    label = jnp.take_along_axis(fn.reshape(n, h * w), idx[:, None], axis=1).astype(jnp.int32)
    return _flat_to_xy(idx, w), label


def initial_click(key: jax.Array, gt_nhw: jax.Array):
    """A uniform pixel of the GT mask, label 1 (a background pixel, label 0, if it is empty)."""
    return correction_click(key, gt_nhw, None)


def mask_to_box(gt_nhw: jax.Array) -> jax.Array:
    """Tight boxes (N, 4) float32 (x0, y0, x1, y1), inclusive pixel indices. An empty mask
    gives (W, H, -1, -1), as SAM 2's `mask_to_box`."""
    n, h, w = gt_nhw.shape
    gt = gt_nhw.astype(bool)
    cols, rows = jnp.any(gt, axis=1), jnp.any(gt, axis=2)  # (N, W), (N, H)
    xs, ys = jnp.arange(w), jnp.arange(h)
    x0 = jnp.min(jnp.where(cols, xs, w), axis=1)
    x1 = jnp.max(jnp.where(cols, xs, -1), axis=1)
    y0 = jnp.min(jnp.where(rows, ys, h), axis=1)
    y1 = jnp.max(jnp.where(rows, ys, -1), axis=1)
    return jnp.stack([x0, y0, x1, y1], axis=-1).astype(jnp.float32)


def noisy_box(key: jax.Array, gt_nhw: jax.Array, noise: float = 0.1, bound: float = 20.0):
    """SAM 2's `sample_box_points`: the tight box, each coordinate moved by U[-m, m] with
    m = min(noise * side, bound) (side = width for x, height for y), clamped to the image.
    Returns points (N, 2, 2) float32 (top-left, bottom-right) and labels (N, 2) = (2, 3)."""
    n, h, w = gt_nhw.shape
    box = mask_to_box(gt_nhw)
    if noise > 0:
        bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        mx, my = jnp.minimum(bw * noise, bound), jnp.minimum(bh * noise, bound)
        u = 2.0 * jax.random.uniform(key, (n, 4)) - 1.0
        box = box + u * jnp.stack([mx, my, mx, my], axis=-1)
        hi = jnp.asarray([w - 1, h - 1, w - 1, h - 1], jnp.float32)
        box = jnp.clip(box, 0.0, hi)
    labels = jnp.broadcast_to(jnp.asarray([2, 3], jnp.int32), (n, 2))
    return box.reshape(n, 2, 2), labels
