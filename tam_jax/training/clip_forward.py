"""The training forward of one batch of clips: SAM 2's `SAM2Train.forward` in static shapes.

    loss, aux = clip_loss(cfg, params, batch, kind, order, corrected, key, num_objects, ...)

1. Image encoder on every frame of every clip at once (B*T images; per-block remat from
   `cfg.vit.remat`).
2. Objects are the batch axis of tracking: clip b's features serve its O object slots, N = B*O
   (padded slots run too and are masked out of the loss).
3. Initial conditioning frames (static count, `kind.init_prompts`): a GT-mask prompt is the
   output itself (`mask_as_output`); a click or a noisy box goes through the SAM heads on the
   frame's features + `no_mem_embed`, followed by `kind.corrections` correction clicks, each
   appended to the frame's points with the previous low-res logits fed back as mask prompt
   (a fixed-size click buffer, unused slots masked out of the decoder, scanned: `_correct`).
   The final mask is encoded into a conditioning memory slot.
4. The other frames in increasing order (`lax.scan`): memory attention over the bank
   (`track.conditioned_features`, the same function inference uses), SAM heads without
   prompt (multimask, best IoU), then on frames drawn for correction (`corrected`, data) the
   same correction loop (`lax.cond`), and the final mask encoded into the bank: as a
   conditioning frame if it was corrected, else into the recent ring.
5. Every prediction step of every frame adds SAM 2's losses (`losses.py`) on its multimask
   high-resolution logits (upsampled from the low-res ones inside the loss's checkpoint);
   sums over frames and steps, divided by the global object count.

remat_frames: each tracked frame (the scan body) and each correction step is a
`jax.checkpoint`: activation memory of one frame / step at a time, for a second forward.

The model config must be in training mode (`configs.for_training`). Shapes: images (B, T, S,
S, 3) normalised, masks (B, T, O, S, S) bool, obj_valid (B, O) bool.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.memory import empty_bank, write_frame, write_frame_as
from tam_jax.models.tam import EfficientTAM
from tam_jax.track import conditioned_features, frame_memory, use_multimask
from tam_jax.training import losses, prompts

_HEAD_KEYS = ("low_res_masks", "high_res_masks", "obj_ptr", "object_score_logits")


def _bind(cfg: EfficientTAMConfig, params, rng) -> EfficientTAM:
    """A model bound inside the current trace level (Flax scopes must not cross jax
    transforms, so every scan / cond body binds its own)."""
    rngs = None if rng is None else {"dropout": rng}
    return EfficientTAM(cfg).bind({"params": params}, rngs=rngs)


# metric sums of `losses.step_losses_and_metrics`, accumulated next to the loss terms
_METRIC_SUMS = ("iou_sum", "best_iou_sum", "num_present", "obj_correct", "num_valid")


def _zero_terms() -> dict:
    return {k: jnp.zeros((), jnp.float32)
            for k in losses.TERMS + ("loss_readout",) + _METRIC_SUMS}


def _token_mask(gt_nss, h: int, w: int):
    """GT masks (N, S, S) -> the fraction of each memory token's pixels inside, (N, h, w, 1)."""
    n, s, _ = gt_nss.shape
    m = gt_nss.astype(jnp.float32).reshape(n, h, s // h, w, s // w)
    return m.mean(axis=(2, 4))[..., None]


def _add(acc: dict, new: dict) -> dict:
    """acc + new, key by key; a term `new` lacks (e.g. "loss_readout") adds nothing."""
    return {k: acc[k] + new[k] if k in new else acc[k] for k in acc}


class _Frame:
    """Per-frame inputs of the N tracked objects."""

    def __init__(self, feats_bthwc, pos_bthwc, masks_btohw, t, num_obj: int):
        take = lambda x: jnp.take(x, t, axis=1)  # (B, ...) of frame t (t traced)
        rep = lambda x: jnp.repeat(x, num_obj, axis=0)  # clip -> its O object slots
        self.feats = rep(take(feats_bthwc))  # (N, h, w, C)
        self.pos = rep(take(pos_bthwc))
        gt = take(masks_btohw)  # (B, O, S, S)
        self.gt = gt.reshape((-1,) + gt.shape[2:])  # (N, S, S)


def _step_terms(heads: dict, frame: _Frame, valid_n, num_objects, loss_cfg,
                logits: str = "low_res_multimasks") -> dict:
    """Loss terms and metric sums of one prediction step (its multimask logits).

    SAM heads' steps pass their low-res logits: the loss upsamples them inside its checkpoint,
    exactly as the heads do for `high_res_multimasks`, and keeps 16x less for the gradient.
    The mask-as-output step passes "high_res_multimasks": its high-res logits come from the
    GT mask itself, not from an upsampling of its low-res ones."""
    terms, metrics = losses.step_losses_and_metrics(
        loss_cfg, heads[logits], heads["ious"], heads["object_score_logits"],
        frame.gt, valid_n, num_objects)
    return {**terms, **metrics}


def _multimask_runs(cfg, is_init_cond_frame: bool, num_points: int, n_clicks: int):
    """Correction steps grouped by their (static) multimask choice: [(j0, j1, multimask)].

    Step j sees num_points + j + 1 points, and `use_multimask` depends on that count, so the
    steps split into runs of consecutive j with one choice (with SAM 2's training settings:
    at most a one-step run of multimask, then single-mask steps)."""
    runs = []
    for j in range(n_clicks):
        multimask = use_multimask(cfg, is_init_cond_frame, num_points + j + 1)
        if runs and runs[-1][2] == multimask:
            runs[-1] = (runs[-1][0], j + 1, multimask)
        else:
            runs.append((j, j + 1, multimask))
    return runs


def _correct(cfg, model_fn, pix, frame: _Frame, heads, points, labels, key, n_clicks: int,
             is_init_cond_frame: bool, prompt_cfg, valid_n, num_objects, loss_cfg,
             remat_steps: bool = False):
    """`n_clicks` correction clicks on one frame (SAM 2's `_iter_correct_pt_sampling`).

    points (N, P, 2) / labels (N, P) so far (P may be 0). Each click is drawn from the error
    of the current mask (or, with prob_sample_from_gt, from the GT mask), appended, and the
    SAM heads rerun on the same conditioned features with the previous low-res logits as mask
    prompt. Returns the last heads (all of them with no clicks, else `_HEAD_KEYS`) and the
    loss terms of the n_clicks new steps.

    Why a loop and not a Python unroll: the points live in a fixed buffer of P + n_clicks
    slots whose not-yet-clicked slots are masked out of the decoder's attention (exactly
    absent, `point_valid`), so every step of a run has the same shapes and runs as one
    `lax.scan` body: two traced decoder passes per frame instead of n_clicks, which is what
    the compile time and the compiler's host memory scale with (7 clicks in SAM 2's recipe).

    remat_steps: each step is a `jax.checkpoint`: the gradient keeps a step's carry (points,
    the last low-res / high-res masks) instead of every decoder activation of every step, and
    recomputes one step at a time. An SA-1B image batch (64 masks, 8 steps, no frame scan to
    rematerialise) needs it to fit a chip (docs/tpu.md).
    """
    if n_clicks == 0:
        return heads, _zero_terms()
    n, p0 = points.shape[:2]
    capacity = p0 + n_clicks
    pts = jnp.concatenate([points.astype(jnp.float32),
                           jnp.zeros((n, n_clicks, 2), jnp.float32)], axis=1)
    lbl = jnp.concatenate([labels.astype(jnp.int32),
                           -jnp.ones((n, n_clicks), jnp.int32)], axis=1)
    state = (pts, lbl, {k: heads[k] for k in _HEAD_KEYS}, _zero_terms())

    def click(state, j, multimask: bool):
        """Correction step j (int or traced) -> the next state."""
        pts, lbl, last, terms = state
        k_gt, k_pt, k_drop = jax.random.split(jax.random.fold_in(key, j), 3)
        from_gt = jax.random.uniform(k_gt) < prompt_cfg.prob_sample_from_gt  # whole batch
        pred = last["high_res_masks"][:, 0] > 0
        pred = jnp.where(from_gt, False, pred)  # an empty prediction = a click from the GT
        new_pt, new_lb = prompts.correction_click(k_pt, frame.gt, pred)
        slot = p0 + j
        pts = jax.lax.dynamic_update_slice_in_dim(pts, new_pt.astype(jnp.float32), slot, 1)
        lbl = jax.lax.dynamic_update_slice_in_dim(lbl, new_lb.astype(jnp.int32), slot, 1)
        valid = jnp.broadcast_to(jnp.arange(capacity) <= slot, (n, capacity))
        prev = jnp.transpose(last["low_res_masks"], (0, 2, 3, 1))  # (N, 4h, 4w, 1)
        out = model_fn(k_drop).sam_heads(pix, pts, lbl, prev, multimask, point_valid=valid)
        terms = _add(terms, _step_terms(out, frame, valid_n, num_objects, loss_cfg))
        return pts, lbl, {k: out[k] for k in _HEAD_KEYS}, terms

    for j0, j1, multimask in _multimask_runs(cfg, is_init_cond_frame, p0, n_clicks):
        step = functools.partial(click, multimask=multimask)
        step = jax.checkpoint(step) if remat_steps else step
        if j1 - j0 == 1:
            state = step(state, jnp.int32(j0))
        else:
            state, _ = jax.lax.scan(lambda st, j, f=step: (f(st, j), None), state,
                                    jnp.arange(j0, j1, dtype=jnp.int32))
    _, _, last, terms = state
    return last, terms


def frame_segments(first: int, end: int, segments: int, num_slots: int):
    """The tracked frames' scan, split: [(a, b, max_frames)] over processing indices [first, end).

    The i-th processed frame of a clip sees at most i memory frames (each processed frame
    writes one), so a scan over [a, b) needs min(b - 1, num_slots) of the bank's `num_slots`
    frame slots (None: all of them). One scan attends over every slot, empty ones included
    (masked); more scans attend over fewer at the price of one more traced body each. The
    boundaries minimise the memory keys attended, sum of (b - a) * max_frames. segments = 0:
    one scan over every slot, whatever can be filled (the layout before this option).
    """
    if segments < 0:
        raise ValueError(f"memory_segments must be >= 0, got {segments}")
    if end <= first:
        return []
    if segments == 0:
        return [(first, end, None)]
    need = lambda a, b: min(b - 1, num_slots)
    # dynamic programme over cut points (a brute force over combinations explodes for long
    # clips): best[(k, e)] = (keys attended, pieces) of the frames [first, e) in k scans
    n = min(segments, end - first)
    best = {(0, first): (0, [])}
    for k in range(1, n + 1):
        for e in range(first + k, end + 1):
            options = [(best[(k - 1, a)][0] + (e - a) * need(a, e), best[(k - 1, a)][1] + [(a, e)])
                       for a in range(first + k - 1, e) if (k - 1, a) in best]
            if options:
                best[(k, e)] = min(options, key=lambda o: o[0])
    pieces = best[(n, end)][1]
    return [(a, b, None if need(a, b) >= num_slots else need(a, b)) for a, b in pieces]


def clip_loss(cfg: EfficientTAMConfig, params, batch: dict, kind: prompts.PlanKind,
              order: jax.Array, corrected: jax.Array, key: jax.Array, num_objects,
              prompt_cfg: prompts.PromptConfig | None = None,
              loss_cfg: losses.LossConfig | None = None, cond_capacity: int = 2,
              deterministic: bool = False, remat_frames: bool = False,
              memory_segments: int = 0, return_frames: bool = False):
    """Loss of one batch of clips and its terms.

    batch: images (B, T, S, S, 3) normalised, masks (B, T, O, S, S) bool, obj_valid (B, O)
    bool. kind (static) and order / corrected (T,) come from `prompts.sample_plan`.
    num_objects: valid objects in the global batch (the loss normaliser). cond_capacity
    (static): conditioning memory slots, >= the most conditioning frames a plan can have.
    memory_segments (static): the tracked frames run as this many scans, each attending over
    only the memory frames that can be filled by then (`frame_segments`; same loss, fewer keys);
    0: one scan over every slot, empty ones masked.
    Returns (loss, aux) with aux the loss terms (summed over frames and steps) and the metric
    sums of `losses.step_losses_and_metrics` (over frames and steps); with
    return_frames (static) also `low_res_masks` (T, N, 1, 4h, 4w): each frame's final mask
    logits, in processing order (for tests against the official model).
    """
    prompt_cfg = prompt_cfg or prompts.PromptConfig()
    loss_cfg = loss_cfg or losses.LossConfig()
    images, masks, obj_valid = batch["images"], batch["masks"], batch["obj_valid"]
    b, t_len = images.shape[:2]
    num_obj = masks.shape[2]
    n = b * num_obj
    valid_n = obj_valid.reshape(n)
    num_objects = jnp.maximum(jnp.asarray(num_objects, jnp.float32), 1.0)
    if kind.num_init_cond > t_len:
        raise ValueError(f"plan has {kind.num_init_cond} conditioning frames, clip has {t_len}")
    key_enc, key_init, key_scan = jax.random.split(key, 3)
    rng_for = (lambda k: None) if deterministic else (lambda k: k)

    def model_fn(k):
        return _bind(cfg, params, rng_for(k))

    # -- 1. image encoder, all frames at once
    flat = images.reshape((b * t_len,) + images.shape[2:])
    feats, pos = model_fn(key_enc).encode_image(flat.astype(jnp.float32))
    feats = feats.reshape((b, t_len) + feats.shape[1:])  # (B, T, h, w, C)
    pos = pos.reshape((b, t_len) + pos.shape[1:])

    needs_memory = t_len > 1
    # the memory-readout loss (off in SAM 2's recipe) stores each memory frame's GT mask per
    # token in one extra bank channel, which the memory attention reads out
    readout = needs_memory and loss_cfg.weight_memory_readout > 0
    bank = empty_bank(cfg, n, cond_capacity=cond_capacity, extra_channels=int(readout))
    fh, fw = feats.shape[2:4]

    def stored(mem, token_mask):
        """A frame's memory features as the bank stores them (+ its token mask, readout)."""
        if not readout:
            return mem
        return jnp.concatenate([mem, token_mask.astype(mem.dtype)], -1)

    terms = _zero_terms()
    finals = []

    # -- 2. initial conditioning frames (static count and prompt kinds)
    for i, prompt in enumerate(kind.init_prompts):
        k = jax.random.fold_in(key_init, i)
        k_prompt, k_heads, k_corr = jax.random.split(k, 3)
        f = order[i]
        frame = _Frame(feats, pos, masks, f, num_obj)
        model = model_fn(k_heads)
        if prompt == "mask":
            heads = model.mask_as_output(frame.feats, frame.gt[..., None])
            terms = _add(terms, _step_terms(heads, frame, valid_n, num_objects, loss_cfg,
                                            logits="high_res_multimasks"))
        else:
            if prompt == "box":
                points, labels = prompts.noisy_box(k_prompt, frame.gt, prompt_cfg.box_noise,
                                                   prompt_cfg.box_noise_bound)
            else:
                points, labels = prompts.initial_click(k_prompt, frame.gt)
            pix = conditioned_features(model, bank, frame.feats, frame.pos, f, t_len,
                                       is_init_cond_frame=True, reverse=False,
                                       deterministic=deterministic)
            heads = model.sam_heads(pix, points, labels, None,
                                    use_multimask(cfg, True, points.shape[1]))
            terms = _add(terms, _step_terms(heads, frame, valid_n, num_objects, loss_cfg))
            heads, more = _correct(cfg, model_fn, pix, frame, heads, points, labels, k_corr,
                                   kind.corrections, True, prompt_cfg, valid_n, num_objects,
                                   loss_cfg, remat_steps=remat_frames)
            terms = _add(terms, more)
        finals.append(heads["low_res_masks"])
        if needs_memory:
            mem = frame_memory(model, frame.feats, heads["high_res_masks"], binarize=False)
            token_mask = _token_mask(frame.gt, fh, fw) if readout else None
            bank = write_frame(bank, f, stored(mem, token_mask), heads["obj_ptr"], is_cond=True)

    # -- 3. the other frames, in order, with memory
    def track_one(carry, xs, max_frames):
        bank, terms = carry
        f, is_corrected, i = xs
        k_heads, k_corr = jax.random.split(jax.random.fold_in(key_scan, i))
        frame = _Frame(feats, pos, masks, f, num_obj)
        model = model_fn(k_heads)
        pix = conditioned_features(model, bank, frame.feats, frame.pos, f, t_len,
                                   is_init_cond_frame=False, reverse=False,
                                   deterministic=deterministic, max_frames=max_frames,
                                   readout=readout)
        step, token_mask = {}, None
        if readout:
            pix, read = pix
            token_mask = _token_mask(frame.gt, fh, fw)  # the target here, stored below
            step["loss_readout"] = losses.memory_readout(read, token_mask.reshape(n, fh * fw),
                                                         valid_n, num_objects)
        heads = model.sam_heads(pix, None, None, None, use_multimask(cfg, False, 0))
        step |= _step_terms(heads, frame, valid_n, num_objects, loss_cfg)
        terms = _add(terms, step)
        final = {k: heads[k] for k in _HEAD_KEYS}
        if kind.corrections:
            def with_clicks(_):
                empty_pts = jnp.zeros((n, 0, 2), jnp.float32)
                empty_lbl = jnp.zeros((n, 0), jnp.int32)
                last, more = _correct(cfg, model_fn, pix, frame, heads, empty_pts, empty_lbl,
                                      k_corr, kind.corrections, False, prompt_cfg, valid_n,
                                      num_objects, loss_cfg, remat_steps=remat_frames)
                return {k: last[k] for k in _HEAD_KEYS}, more

            def without(_):
                return final, _zero_terms()

            final, more = jax.lax.cond(is_corrected, with_clicks, without, None)
            terms = _add(terms, more)
        mem = frame_memory(model_fn(None), frame.feats, final["high_res_masks"], binarize=False)
        bank = write_frame_as(bank, f, stored(mem, token_mask), final["obj_ptr"], is_corrected)
        return (bank, terms), (final["low_res_masks"] if return_frames else None)

    num_slots = cond_capacity + cfg.num_maskmem - 1
    for a, b_end, max_frames in frame_segments(kind.num_init_cond, t_len, memory_segments,
                                               num_slots):
        body = functools.partial(track_one, max_frames=max_frames)
        body = jax.checkpoint(body) if remat_frames else body
        xs = (order[a:b_end], corrected[a:b_end], jnp.arange(a, b_end))
        (bank, terms), tracked = jax.lax.scan(body, (bank, terms), xs)
        if return_frames:
            finals += list(tracked)

    loss = losses.total(loss_cfg, terms)
    if readout:
        loss = loss + loss_cfg.weight_memory_readout * terms["loss_readout"]
    aux = dict(terms)
    if return_frames:
        aux["low_res_masks"] = jnp.stack(finals)
    return loss, aux
