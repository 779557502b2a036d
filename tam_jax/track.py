"""One pure tracking step over a fixed-shape memory bank (paper §3; spec §4, §6).

`track_step(cfg, params, bank, features, pos, frame_idx, num_frames, ...)` is
`SAM2Base.track_step` for all objects at once (objects are the batch axis):

  mask prompt         -> the mask is the output (`mask_as_output`), no memory attention;
  initial cond. frame -> backbone features + `no_mem_embed` (no memory);
  any other frame     -> memory attention over the bank (`memory.assemble`), then the SAM
                         heads with the frame's clicks (and, for a correction on a tracked
                         frame, the previous low-res logits as mask prompt); multimask output
                         with best-IoU selection when the frame has at most one click;
  then                -> memory encoding of the chosen mask (binarised on clicked frames),
                         rounded to bfloat16 as the official predictor stores it, and written
                         into the bank (conditioning slot or recent ring) when `store` is set.

Everything that changes shapes or control flow is static (`is_init_cond_frame`, `reverse`,
`store`, point count); frame index and video length are traced, so a video never retraces.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.memory import MemoryBank, assemble_with_extra, memory_dtype, write_frame
from tam_jax.models.tam import EfficientTAM


def use_multimask(cfg: EfficientTAMConfig, is_init_cond_frame: bool, num_points: int) -> bool:
    """`SAM2Base._use_multimask`: several candidate masks when the frame has <= 1 click."""
    return (cfg.multimask_output_in_sam
            and (is_init_cond_frame or cfg.multimask_output_for_tracking)
            and cfg.multimask_min_pt_num <= num_points <= cfg.multimask_max_pt_num)


def mask_for_memory(cfg: EfficientTAMConfig, high_res_masks, binarize: bool):
    """Mask logits (B, 1, S, S) -> the memory encoder's input (B, S, S, 1): sigmoid (or, on
    clicked frames, a hard threshold) scaled by 20 and shifted by -10 (spec §4.1)."""
    m = high_res_masks.astype(jnp.float32)
    m = (m > 0).astype(jnp.float32) if binarize else jax.nn.sigmoid(m)
    m = m * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
    return jnp.transpose(m, (0, 2, 3, 1))


def encode_frame_memory(cfg: EfficientTAMConfig, params, features_bhwc, high_res_masks,
                        binarize: bool):
    """Memory features (B, h, w, mem_dim) of a frame, in the bank's storage dtype."""
    model = EfficientTAM(cfg).bind({"params": params})
    return frame_memory(model, features_bhwc, high_res_masks, binarize)


def frame_memory(model: EfficientTAM, features_bhwc, high_res_masks, binarize: bool):
    """`encode_frame_memory` with a bound model (inside a step that binds it once)."""
    cfg = model.cfg
    feats, _ = model.encode_memory(features_bhwc, mask_for_memory(cfg, high_res_masks, binarize),
                                   skip_mask_sigmoid=True)
    return feats.astype(memory_dtype(cfg))


def conditioned_features(model: EfficientTAM, bank: MemoryBank, features_bhwc, pos_bhwc,
                         frame_idx, num_frames, *, is_init_cond_frame: bool, reverse: bool,
                         deterministic: bool = True, max_frames: int | None = None,
                         readout: bool = False):
    """The frame's features (B, h, w, d) as the SAM heads see them: + `no_mem_embed` on an
    initial conditioning frame, else after memory attention over the bank (a bound model;
    dropout draws from its "dropout" rng when not deterministic). max_frames (static): at most
    this many memory frames are selected, the rest of the bank is left out (`memory.assemble`).
    readout (static; a bank with one extra channel, `empty_bank(extra_channels=1)`, on a
    tracked frame): also return the memory attention's readout of that channel, (L, B, h*w)
    (`MemoryAttention`)."""
    cfg = model.cfg
    b, h, w, d = features_bhwc.shape
    if is_init_cond_frame and cfg.directly_add_no_mem_embed:
        if readout:
            raise ValueError("readout needs a tracked frame (the memory attention runs)")
        return features_bhwc + model.no_mem_embed.astype(features_bhwc.dtype)
    memory, memory_pos, valid, n_ptr, extra = assemble_with_extra(
        cfg, bank, model.maskmem_tpos_enc, frame_idx, num_frames, reverse,
        max_frames=max_frames)
    if readout and (extra is None or extra.shape[-1] != 2):
        raise ValueError("readout needs a bank with one extra channel")
    out = model.condition_on_memory(
        features_bhwc.reshape(b, h * w, d), pos_bhwc.reshape(b, h * w, d), memory, memory_pos,
        num_obj_ptr_tokens=n_ptr, key_valid_bm=valid, deterministic=deterministic,
        readout_bme=extra if readout else None)
    if readout:
        return out[0].reshape(b, h, w, d), out[1]
    return out.reshape(b, h, w, d)


def track_step(
    cfg: EfficientTAMConfig,
    params,
    bank: MemoryBank,
    features_bhwc: jax.Array,
    pos_bhwc: jax.Array,
    frame_idx,
    num_frames,
    point_coords: jax.Array | None = None,
    point_labels: jax.Array | None = None,
    mask_inputs: jax.Array | None = None,
    prev_mask_logits: jax.Array | None = None,
    write_mask: jax.Array | None = None,
    *,
    is_init_cond_frame: bool = False,
    reverse: bool = False,
    run_mem_encoder: bool = True,
    store: str | None = None,
    deterministic: bool = True,
) -> tuple[dict, MemoryBank]:
    """Track every object of `bank` on one frame.

    features / pos (B, h, w, 256): raw backbone features of the frame (broadcast over objects
    by the caller) and their sine PE. point_coords (B, N, 2) in model-input pixels with labels
    (B, N); mask_inputs (B, S, S, 1) in {0, 1}; prev_mask_logits (B, 4h, 4w, 1) (a correction
    on a tracked frame; clamp to +-32 first, as the official predictor). store: None, "cond"
    (a prompted frame) or "recent" (a tracked frame); write_mask (B,) bool limits the store to
    some objects (a frame that is a conditioning frame of one object is not re-stored).
    Returns (outputs, new bank); outputs has low_res_masks (B, 1, 4h, 4w), high_res_masks
    (B, 1, S, S), ious (B, M), obj_ptr (B, 256), object_score_logits (B, 1) and, with
    run_mem_encoder, maskmem_features (B, h, w, C).
    """
    if store not in (None, "cond", "recent"):
        raise ValueError(f"store must be None, 'cond' or 'recent', got {store!r}")
    if store and not run_mem_encoder:
        raise ValueError("store needs run_mem_encoder=True")
    model = EfficientTAM(cfg).bind({"params": params})
    if mask_inputs is not None and cfg.use_mask_input_as_output_without_sam:
        heads = model.mask_as_output(features_bhwc, mask_inputs)
    else:
        pix = conditioned_features(model, bank, features_bhwc, pos_bhwc, frame_idx, num_frames,
                                   is_init_cond_frame=is_init_cond_frame, reverse=reverse,
                                   deterministic=deterministic)
        num_points = 0 if point_labels is None else point_labels.shape[1]
        multimask = use_multimask(cfg, is_init_cond_frame, num_points)
        heads = model.sam_heads(pix, point_coords, point_labels, prev_mask_logits, multimask)
    out = dict(low_res_masks=heads["low_res_masks"], high_res_masks=heads["high_res_masks"],
               ious=heads["ious"], obj_ptr=heads["obj_ptr"],
               object_score_logits=heads["object_score_logits"])
    if run_mem_encoder:
        binarize = cfg.binarize_mask_from_pts_for_mem_enc and point_labels is not None
        out["maskmem_features"] = frame_memory(model, features_bhwc,
                                                       heads["high_res_masks"], binarize)
        if store:
            bank = write_frame(bank, frame_idx, out["maskmem_features"], out["obj_ptr"],
                               is_cond=store == "cond", write_mask_b=write_mask)
    return out, bank


@functools.lru_cache(maxsize=8)
def jitted_track_step(cfg: EfficientTAMConfig):
    """`track_step` compiled once per config and per static flags / shapes."""
    static = ("is_init_cond_frame", "reverse", "run_mem_encoder", "store", "deterministic")
    return jax.jit(functools.partial(track_step, cfg), static_argnames=static)
