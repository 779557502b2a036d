"""SAM 2 training losses (`training/loss_fns.py::MultiStepMultiMasksAndIous`), static shapes.

Formulas: `data_and_eval.md` §3.4-3.5. For one prediction step on one frame, with N object
slots (padding included) and M masks per object (3 multimask, else 1):

  loss_mask   sigmoid focal (alpha 0.25, gamma 2), mean over H*W, of the best mask
  loss_dice   1 - (2 sum(sig * t) + 1) / (sum(sig) + sum(t) + 1) of the best mask
  loss_iou    |iou_pred - IoU(logits > 0, t)| (or squared), mean over the M masks
  loss_class  BCE of the object score against "the target is non-empty"

`best` = argmin_m(w_mask * focal + w_dice * dice). The first three terms are multiplied by
the object's presence (no mask supervision when the object is absent); every term is summed
over objects and divided by `num_objects`, the number of valid objects in the *global* batch.
Sums over frames and correction steps are the caller's (`step_losses` returns plain scalars,
so it composes with `lax.scan`); `total` gives the weighted `core_loss`.

Padded object slots (`valid` False) contribute exactly 0 to every term and to the gradient,
even when their logits are garbage (inf / nan): their inputs are replaced before use.

Memory: the per-pixel work is one `jax.checkpoint`-ed function that reduces (N, M, H, W)
logits to a handful of (N, M) sums. Under autodiff it keeps only its inputs (logits and the
boolean targets) and recomputes the elementwise terms in the backward pass, so a `lax.scan`
over frames x steps at 1024^2 does not stack float32 per-pixel residuals. Given the SAM heads'
low-res (4h x 4w) logits, it upsamples them itself, inside the checkpoint: the same bilinear
resize the heads apply (`models.tam.upsample_masks`), so the same numbers, but what it keeps is
16x smaller (256^2 instead of 1024^2 per mask: 64 masks x 8 prompt steps of an SA-1B image
would otherwise hold GiBs). Accumulation is float32 whatever the logits' dtype.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from tam_jax.models.tam import upsample_masks

TERMS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """`MultiStepMultiMasksAndIous` settings; defaults are SAM 2's (MOSE fine-tune config)."""

    weight_mask: float = 20.0
    weight_dice: float = 1.0
    weight_iou: float = 1.0
    weight_class: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_alpha_obj_score: float = -1.0  # alpha < 0, gamma 0: the object score gets plain BCE
    focal_gamma_obj_score: float = 0.0
    supervise_all_iou: bool = True  # IoU loss on all M masks (mean), else on `best` only
    iou_use_l1: bool = True  # else squared error
    pred_obj_scores: bool = True  # False: no class loss, every object counts as present
    # Not SAM 2's: a loss on the memory attention's match (`memory_readout`); 0 = off, SAM 2
    weight_memory_readout: float = 0.0

    @property
    def weights(self) -> dict[str, float]:
        return {"loss_mask": self.weight_mask, "loss_dice": self.weight_dice,
                "loss_iou": self.weight_iou, "loss_class": self.weight_class}


def _as_bool(targets: jax.Array) -> jax.Array:
    return targets if targets.dtype == jnp.bool_ else targets > 0.5


def _focal_terms(logits: jax.Array, t: jax.Array, alpha: float, gamma: float):
    """Elementwise focal loss and sigmoid(logits), float32, from one sigmoid and one softplus.

    With the signed logit s = logits if t else -logits (t binary):
      BCE = -log sigmoid(s) = softplus(-s)   and   1 - p_t = sigmoid(-s) =: q,
    both exact and with finite gradients for |logits| ~ 1e3 (no log(0), no 1 - 1).
    """
    x = logits.astype(jnp.float32)
    s = jnp.where(t, x, -x)
    q = jax.nn.sigmoid(-s)  # 1 - p_t
    ce = jax.nn.softplus(-s)
    g = float(gamma)
    if g == 0.0:
        mod = None
    elif g.is_integer() and g > 0:
        mod = jax.lax.integer_pow(q, int(g))  # gradient g q^(g-1): finite at q = 0
    else:
        # q ** g has an infinite derivative at q = 0 for g < 1 (then 0 * inf = nan): use logs.
        mod = jnp.exp(g * jax.nn.log_sigmoid(-s))
    loss = ce if mod is None else ce * mod
    if alpha >= 0:
        loss = loss * jnp.where(t, jnp.float32(alpha), jnp.float32(1.0 - alpha))
    prob = jnp.where(t, 1.0 - q, q)  # sigmoid(x), reusing q
    return loss, prob


def sigmoid_focal(logits: jax.Array, targets: jax.Array, alpha: float = 0.25,
                  gamma: float = 2.0) -> jax.Array:
    """Elementwise sigmoid focal loss (float32, shape of `logits`); binary `targets`.

    BCE-with-logits * (1 - p_t)**gamma * (alpha t + (1 - alpha)(1 - t)); alpha < 0 disables
    the alpha weighting, so alpha = -1, gamma = 0 is plain BCE.
    """
    t = jnp.broadcast_to(_as_bool(targets), logits.shape)
    return _focal_terms(logits, t, alpha, gamma)[0]


def _mask_stats(logits_nmhw, t_nhw, valid_n, alpha, gamma):
    """Per-mask reductions of (N, M, h, w) logits against (N, H, W) targets -> dict of (N, M).
    Logits smaller than the targets (square, as the heads' low-res masks) are first upsampled
    to them with `models.tam.upsample_masks`.

    Padded slots see logits 0 and an empty target, so nothing non-finite reaches them.
    """
    size = t_nhw.shape[-1]
    if logits_nmhw.shape[-2:] != t_nhw.shape[-2:]:
        if t_nhw.shape[-2] != size or logits_nmhw.shape[-2] != logits_nmhw.shape[-1]:
            raise ValueError(f"logits {logits_nmhw.shape} and targets {t_nhw.shape}: only "
                             "square low-res logits upsample to square targets")
        logits_nmhw = upsample_masks(logits_nmhw, size)
    x = jnp.where(valid_n[:, None, None, None], logits_nmhw, 0)
    t_nhw = t_nhw & valid_n[:, None, None]
    t = t_nhw[:, None]  # (N, 1, H, W), broadcast over M
    focal, prob = _focal_terms(x, t, alpha, gamma)
    hw = x.shape[-2] * x.shape[-1]
    f32 = jnp.float32
    pred = x > 0
    return {
        "focal": jnp.sum(focal, axis=(-2, -1)) / hw,
        "prob_sum": jnp.sum(prob, axis=(-2, -1)),
        "inter": jnp.sum(jnp.where(t, prob, 0.0), axis=(-2, -1)),
        "tgt_sum": jnp.sum(t_nhw, axis=(-2, -1), dtype=f32)[:, None],  # (N, 1)
        "n_and": jnp.sum(pred & t, axis=(-2, -1), dtype=f32),
        "n_or": jnp.sum(pred | t, axis=(-2, -1), dtype=f32),
    }


def _per_object(cfg: LossConfig, mask_logits, ious, obj_logits, targets, valid):
    """Unnormalised per-object terms (N,) each, plus (N,) / (N, M) quantities for metrics."""
    n, m = mask_logits.shape[:2]
    t = _as_bool(targets)
    valid = valid.astype(bool)
    stats_fn = jax.checkpoint(functools.partial(
        _mask_stats, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma))
    st = stats_fn(mask_logits, t, valid)

    dice = 1.0 - (2.0 * st["inter"] + 1.0) / (st["prob_sum"] + st["tgt_sum"] + 1.0)  # (N, M)
    focal = st["focal"]
    # The IoU target carries no gradient (it is built from comparisons anyway).
    actual_iou = jax.lax.stop_gradient(st["n_and"] / jnp.maximum(st["n_or"], 1.0))  # (N, M)
    iou_pred = jnp.where(valid[:, None], ious.astype(jnp.float32), 0.0)
    iou_err = iou_pred - actual_iou
    iou_loss = jnp.abs(iou_err) if cfg.iou_use_l1 else jnp.square(iou_err)  # (N, M)

    if m > 1:
        combo = cfg.weight_mask * focal + cfg.weight_dice * dice
        best = jnp.argmin(jax.lax.stop_gradient(combo), axis=-1)  # (N,), first on ties
    else:
        best = jnp.zeros((n,), jnp.int32)
    pick = lambda a: jnp.take_along_axis(a, best[:, None], axis=-1)[:, 0]
    loss_mask, loss_dice = pick(focal), pick(dice)
    loss_iou = jnp.mean(iou_loss, axis=-1) if cfg.supervise_all_iou else pick(iou_loss)

    present = jnp.any(t, axis=(-2, -1)) & valid  # (N,) target_obj
    if cfg.pred_obj_scores:
        obj = jnp.where(valid[:, None], obj_logits, 0)
        loss_class = jnp.mean(sigmoid_focal(obj, present[:, None], cfg.focal_alpha_obj_score,
                                            cfg.focal_gamma_obj_score), axis=-1)
        supervise = present
    else:
        loss_class = jnp.zeros((n,), jnp.float32)
        supervise = valid
    zero = jnp.float32(0.0)
    terms = {
        "loss_mask": jnp.where(supervise, loss_mask, zero),
        "loss_dice": jnp.where(supervise, loss_dice, zero),
        "loss_iou": jnp.where(supervise, loss_iou, zero),
        "loss_class": jnp.where(valid, loss_class, zero),
    }
    aux = {"best": best, "actual_iou": actual_iou, "present": present, "valid": valid}
    return terms, aux


def step_losses_and_metrics(cfg: LossConfig, mask_logits: jax.Array, ious: jax.Array,
                            obj_logits: jax.Array, targets: jax.Array, valid: jax.Array,
                            num_objects: jax.Array | float) -> tuple[dict, dict]:
    """Losses and logging sums of one prediction step on one frame.

    Args:
      mask_logits: (N, M, H, W) at image resolution, or the heads' low-res (N, M, h, h)
        logits, upsampled here (inside the loss's checkpoint: see the module docstring); any
        float dtype (accumulated in float32).
      ious: (N, M) predicted IoUs.
      obj_logits: (N, 1) object-score logits (ignored unless `cfg.pred_obj_scores`).
      targets: (N, H, W) bool (or 0/1) ground-truth masks.
      valid: (N,) bool; False marks a padded object slot.
      num_objects: valid objects in the global batch (clamped >= 1 here too).

    Returns:
      losses: {"loss_mask", "loss_dice", "loss_iou", "loss_class"} float32 scalars.
      metrics: float32 scalar sums without gradient, to add over frames / steps and pass to
        `summarize_metrics`: "iou_sum" (IoU of the mask with the highest predicted IoU, the
        one tracking propagates) and "best_iou_sum" (IoU of the supervised `best` mask), both
        over present valid objects; "num_present"; "obj_correct" (sign of the object score
        matches presence) over valid objects; "num_valid".
    """
    terms, aux = _per_object(cfg, mask_logits, ious, obj_logits, targets, valid)
    denom = jnp.maximum(jnp.asarray(num_objects, jnp.float32), 1.0)
    losses = {k: jnp.sum(terms[k]) / denom for k in TERMS}

    sg = jax.lax.stop_gradient
    actual, present, valid = aux["actual_iou"], aux["present"], aux["valid"]
    chosen = jnp.argmax(sg(ious), axis=-1)
    at = lambda idx: jnp.take_along_axis(actual, idx[:, None], axis=-1)[:, 0]
    obj_ok = (sg(obj_logits[:, 0]) > 0) == present
    f32 = jnp.float32
    metrics = {
        "iou_sum": jnp.sum(jnp.where(present, at(chosen), 0.0)),
        "best_iou_sum": jnp.sum(jnp.where(present, at(aux["best"]), 0.0)),
        "num_present": jnp.sum(present, dtype=f32),
        "obj_correct": jnp.sum(obj_ok & valid, dtype=f32),
        "num_valid": jnp.sum(valid, dtype=f32),
    }
    return losses, metrics


def memory_readout(readout_lnt: jax.Array, target_nt: jax.Array, valid_n: jax.Array,
                   num_objects: jax.Array | float) -> jax.Array:
    """Not in SAM 2: how well the memory attention finds the object. readout (L, N, HW): per
    memory-attention layer, object and query token, the attention-weighted object mask of the
    memory frames' tokens (`MemoryAttention` with `readout_bme`), in [0, 1]; target (N, HW):
    the tracked frame's ground-truth mask averaged over each token's pixels. -> binary cross
    entropy, mean over layers and tokens, summed over valid objects / num_objects.

    Copying a mask in place scores badly on this loss once the object has moved: it rewards
    attention that goes from where the object is now to where it was, which is the appearance
    match the demo's model does not learn from the mask losses alone (docs/benchmarks.md)."""
    eps = 1e-4
    r = jnp.clip(readout_lnt.astype(jnp.float32), eps, 1.0 - eps)
    t = target_nt.astype(jnp.float32)[None]
    bce = -(t * jnp.log(r) + (1.0 - t) * jnp.log1p(-r))  # (L, N, HW)
    per_obj = jnp.mean(bce, axis=(0, 2))
    denom = jnp.maximum(jnp.asarray(num_objects, jnp.float32), 1.0)
    return jnp.sum(jnp.where(valid_n, per_obj, 0.0)) / denom


def step_losses(cfg: LossConfig, mask_logits: jax.Array, ious: jax.Array, obj_logits: jax.Array,
                targets: jax.Array, valid: jax.Array,
                num_objects: jax.Array | float) -> dict[str, jax.Array]:
    """The four loss components of one step (see `step_losses_and_metrics` for shapes)."""
    return step_losses_and_metrics(cfg, mask_logits, ious, obj_logits, targets, valid,
                                   num_objects)[0]


def total(cfg: LossConfig, comps: dict[str, jax.Array]) -> jax.Array:
    """`core_loss`: the weighted sum of the four components."""
    return sum(w * comps[k] for k, w in cfg.weights.items())


def summarize_metrics(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Means from (possibly accumulated) metric sums: "iou", "best_iou", "obj_acc"."""
    n_present = jnp.maximum(sums["num_present"], 1.0)
    return {
        "iou": sums["iou_sum"] / n_present,
        "best_iou": sums["best_iou_sum"] / n_present,
        "obj_acc": sums["obj_correct"] / jnp.maximum(sums["num_valid"], 1.0),
    }
