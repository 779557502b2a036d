"""The video memory as a fixed-shape pytree (paper §3.1; spec §4.2).

The official predictor keeps per-object Python dicts {frame_idx: output}. Here the memory is a
`MemoryBank` of static shape, objects on the batch axis, every slot tagged with the frame index
it holds and a validity bit. Which slots a frame attends to is decided *inside* the compiled
step from those frame indices, so the same compiled step serves forward and reverse tracking,
streams and training:

  conditioning slots (capacity `cond_capacity`, default 4): memories of prompted frames, all
      attended to (`max_cond_frames_in_attn = -1`) with temporal index t_pos = 0; their object
      pointers only when the frame is not in the future (`only_obj_ptrs_in_the_past_for_eval`).
  recent slots (`num_maskmem - 1` = 6, slot = frame % 6): non-conditioning frames; the one at
      distance d in the tracking direction (1 <= d <= 6) gets t_pos = num_maskmem - d.
  pointer slots (`max_obj_ptrs_in_encoder` = 16, slot = frame % 16): object pointers of
      non-conditioning frames at distance 1 .. min(num_frames, 16) - 1 in the tracking direction.

A slot whose frame is not selected is masked out of the attention, which gives exactly the
result of the slot being absent (`attention.attend`).

Capacity: writing a conditioning frame when all `cond_capacity` slots hold other frames does
not overwrite anything; it sets `cond_overflow` for that object (the predictors raise a clear
error on it). Re-prompting a frame already in a slot replaces that slot.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.models.position import sine_position_encoding

DEFAULT_COND_CAPACITY = 4


@flax.struct.dataclass
class MemoryBank:
    """Memory of B objects. Features (B, K, h, w, mem_dim) in `memory_dtype`; pointers float32."""

    cond_feats: jax.Array  # (B, Kc, h, w, C)
    cond_ptr: jax.Array  # (B, Kc, D)
    cond_frame: jax.Array  # (B, Kc) int32
    cond_valid: jax.Array  # (B, Kc) bool
    recent_feats: jax.Array  # (B, R, h, w, C)
    recent_frame: jax.Array  # (B, R) int32
    recent_valid: jax.Array  # (B, R) bool
    ptr: jax.Array  # (B, P, D)
    ptr_frame: jax.Array  # (B, P) int32
    ptr_valid: jax.Array  # (B, P) bool
    cond_overflow: jax.Array  # (B,) bool: a conditioning frame found no free slot

    @property
    def num_objects(self) -> int:
        return self.cond_feats.shape[0]


def memory_dtype(cfg: EfficientTAMConfig):
    """bfloat16 where the official predictor rounds stored memories, else the compute dtype."""
    rounded = cfg.round_memory_to_bf16 or cfg.compute_dtype == "bfloat16"
    return jnp.bfloat16 if rounded else jnp.float32


def empty_bank(cfg: EfficientTAMConfig, num_objects: int,
               cond_capacity: int = DEFAULT_COND_CAPACITY, extra_channels: int = 0) -> MemoryBank:
    """An all-invalid bank for `num_objects` objects. extra_channels: stored after the
    `mem_dim` memory channels of every frame and kept out of the memory itself (`assemble`
    returns them separately: training's memory-readout loss stores each frame's object mask
    there)."""
    if cond_capacity < 1:
        raise ValueError(f"cond_capacity must be >= 1, got {cond_capacity}")
    if cfg.memory_temporal_stride_for_eval != 1:
        raise NotImplementedError("memory_temporal_stride_for_eval != 1 is not supported")
    b, h, c, d = num_objects, cfg.feat_size, cfg.mem_dim + extra_channels, cfg.hidden_dim
    r, p = cfg.num_maskmem - 1, cfg.max_obj_ptrs_in_encoder
    dt = memory_dtype(cfg)
    return MemoryBank(
        cond_feats=jnp.zeros((b, cond_capacity, h, h, c), dt),
        cond_ptr=jnp.zeros((b, cond_capacity, d), jnp.float32),
        cond_frame=jnp.full((b, cond_capacity), -1, jnp.int32),
        cond_valid=jnp.zeros((b, cond_capacity), bool),
        recent_feats=jnp.zeros((b, r, h, h, c), dt),
        recent_frame=jnp.full((b, r), -1, jnp.int32),
        recent_valid=jnp.zeros((b, r), bool),
        ptr=jnp.zeros((b, p, d), jnp.float32),
        ptr_frame=jnp.full((b, p), -1, jnp.int32),
        ptr_valid=jnp.zeros((b, p), bool),
        cond_overflow=jnp.zeros((b,), bool),
    )


def write_frame(bank: MemoryBank, frame_idx, feats_bhwc, obj_ptr_bd, is_cond: bool,
                write_mask_b=None) -> MemoryBank:
    """Store one frame's memory features (B, h, w, C) and pointer (B, D) for every object.

    is_cond (static): into a conditioning slot (the one holding `frame_idx`, else the first
    free one, else nothing and `cond_overflow`), or into the recent / pointer rings (slot
    frame % size). write_mask_b (B,) bool limits the write to some objects.
    """
    b = bank.num_objects
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    write = jnp.ones((b,), bool) if write_mask_b is None else jnp.asarray(write_mask_b, bool)
    feats = feats_bhwc.astype(bank.cond_feats.dtype)
    if is_cond:
        same = bank.cond_valid & (bank.cond_frame == frame_idx)  # (B, Kc)
        free = ~bank.cond_valid
        has_same, has_free = same.any(-1), free.any(-1)
        slot = jnp.where(has_same, jnp.argmax(same, -1), jnp.argmax(free, -1))  # (B,)
        ok = write & (has_same | has_free)
        hot = jax.nn.one_hot(slot, bank.cond_valid.shape[1], dtype=bool) & ok[:, None]
        return bank.replace(
            cond_feats=jnp.where(hot[:, :, None, None, None], feats[:, None], bank.cond_feats),
            cond_ptr=jnp.where(hot[:, :, None], obj_ptr_bd[:, None], bank.cond_ptr),
            cond_frame=jnp.where(hot, frame_idx, bank.cond_frame),
            cond_valid=bank.cond_valid | hot,
            cond_overflow=bank.cond_overflow | (write & ~(has_same | has_free)),
        )
    r, p = bank.recent_valid.shape[1], bank.ptr_valid.shape[1]
    hot_r = (jnp.arange(r) == frame_idx % r)[None] & write[:, None]  # (B, R)
    hot_p = (jnp.arange(p) == frame_idx % p)[None] & write[:, None]  # (B, P)
    return bank.replace(
        recent_feats=jnp.where(hot_r[:, :, None, None, None], feats[:, None], bank.recent_feats),
        recent_frame=jnp.where(hot_r, frame_idx, bank.recent_frame),
        recent_valid=bank.recent_valid | hot_r,
        ptr=jnp.where(hot_p[:, :, None], obj_ptr_bd[:, None], bank.ptr),
        ptr_frame=jnp.where(hot_p, frame_idx, bank.ptr_frame),
        ptr_valid=bank.ptr_valid | hot_p,
    )


def write_frame_as(bank: MemoryBank, frame_idx, feats_bhwc, obj_ptr_bd, is_cond) -> MemoryBank:
    """`write_frame` with a traced `is_cond` (scalar bool): both writes, one kept. Training
    needs it: a frame that gets correction clicks becomes a conditioning frame, and which
    frames do is data, not a shape."""
    as_cond = write_frame(bank, frame_idx, feats_bhwc, obj_ptr_bd, is_cond=True)
    as_recent = write_frame(bank, frame_idx, feats_bhwc, obj_ptr_bd, is_cond=False)
    return jax.tree.map(lambda c, r: jnp.where(is_cond, c, r), as_cond, as_recent)


def drop_frame(bank: MemoryBank, frame_idx, drop_mask_b=None) -> MemoryBank:
    """Invalidate every slot (conditioning, recent, pointer) holding `frame_idx`."""
    b = bank.num_objects
    drop = jnp.ones((b,), bool) if drop_mask_b is None else jnp.asarray(drop_mask_b, bool)
    hit = lambda frames: (frames == frame_idx) & drop[:, None]
    return bank.replace(cond_valid=bank.cond_valid & ~hit(bank.cond_frame),
                        recent_valid=bank.recent_valid & ~hit(bank.recent_frame),
                        ptr_valid=bank.ptr_valid & ~hit(bank.ptr_frame))


def assemble(cfg: EfficientTAMConfig, bank: MemoryBank, maskmem_tpos_enc, frame_idx,
             num_frames, reverse: bool, max_frames: int | None = None):
    """`assemble_with_extra` without the extra channels."""
    return assemble_with_extra(cfg, bank, maskmem_tpos_enc, frame_idx, num_frames, reverse,
                               max_frames)[:4]


def assemble_with_extra(cfg: EfficientTAMConfig, bank: MemoryBank, maskmem_tpos_enc, frame_idx,
                        num_frames, reverse: bool, max_frames: int | None = None):
    """The memory the current frame attends to, with its positional encoding and key mask.

    Returns memory (B, M, C), memory_pos (B, M, C), key_valid (B, M) bool and the static
    pointer-token count, with M = F * h * w + (Kc + P) * D / C: F = Kc + R memory frames
    (conditioning, then recent), then pointer tokens (each D-dim pointer split into D / C
    consecutive tokens, zero PE: `add_tpos_enc_to_obj_ptrs` is off). maskmem_tpos_enc
    (num_maskmem, 1, 1, C).

    max_frames (static): keep only the first `max_frames` selected memory frames of each object,
    in bank order (F = max_frames). The caller guarantees no more are selected (training knows
    it: a clip's i-th processed frame has at most i memories), so the result is the same
    attention without the masked keys of empty slots, which are most keys early in a clip.

    A fifth value: a bank made with `empty_bank(extra_channels=E)` gives its extra channels
    per key, (B, M, E + 1): the E channels of each spatial key's frame and token, then 1 for a
    spatial key / 0 for a pointer token (zeros in the E channels); None for a plain bank.
    """
    b, kc, h, w, c_all = bank.cond_feats.shape
    c = cfg.mem_dim
    n_extra = c_all - c
    if n_extra < 0:
        raise ValueError(f"bank holds {c_all} channels, fewer than mem_dim {c}")
    r = bank.recent_feats.shape[1]
    d = bank.ptr.shape[-1]
    nm = cfg.num_maskmem
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    num_frames = jnp.asarray(num_frames, jnp.int32)
    tpos = maskmem_tpos_enc.reshape(nm, c).astype(jnp.float32)
    spatial_pe = sine_position_encoding(h, w, c).reshape(h * w, c)

    # distance in the tracking direction (positive = behind the current frame)
    dist = lambda frames: (frames - frame_idx) if reverse else (frame_idx - frames)

    # -- spatial memories: conditioning (t_pos 0, all) then recent (t_pos = nm - distance)
    d_recent = dist(bank.recent_frame)  # (B, R)
    recent_ok = bank.recent_valid & (d_recent >= 1) & (d_recent <= nm - 1)
    tpos_idx_recent = jnp.clip(d_recent - 1, 0, nm - 1)  # index nm - t_pos - 1 = distance - 1
    pos_cond = jnp.broadcast_to(tpos[nm - 1], (b, kc, c))
    pos_recent = tpos[tpos_idx_recent]  # (B, R, C)
    frame_pos = jnp.concatenate([pos_cond, pos_recent], axis=1)  # (B, F, C)
    feats = jnp.concatenate([bank.cond_feats, bank.recent_feats], axis=1)  # (B, F, h, w, C)
    f = kc + r
    valid_frames = jnp.concatenate([bank.cond_valid, recent_ok], axis=1)  # (B, F)
    if max_frames is not None and max_frames < f:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        # selected frames first, each group in bank order (a stable sort of "not selected")
        keep = jnp.argsort((~valid_frames).astype(jnp.int8), axis=1, stable=True)[:, :max_frames]
        feats = jnp.take_along_axis(feats, keep[:, :, None, None, None], axis=1)
        frame_pos = jnp.take_along_axis(frame_pos, keep[:, :, None], axis=1)
        valid_frames = jnp.take_along_axis(valid_frames, keep, axis=1)
        f = max_frames
    extra_sp = feats[..., c:].astype(jnp.float32).reshape(b, f * h * w, n_extra)
    memory_sp = feats[..., :c].astype(jnp.float32).reshape(b, f * h * w, c)
    pos_sp = (spatial_pe[None, None] + frame_pos[:, :, None, :]).reshape(b, f * h * w, c)
    valid_sp = jnp.repeat(valid_frames, h * w, axis=1)

    # -- object pointers: past conditioning frames, then recent frames 1 .. max_ptr - 1 away
    max_ptr = jnp.minimum(num_frames, cfg.max_obj_ptrs_in_encoder)
    d_cond = dist(bank.cond_frame)
    cond_ptr_ok = bank.cond_valid & ((d_cond >= 0) if cfg.only_obj_ptrs_in_the_past_for_eval
                                     else True)
    d_ptr = dist(bank.ptr_frame)
    ptr_ok = (bank.ptr_valid & (d_ptr >= 1) & (d_ptr < max_ptr) & (bank.ptr_frame >= 0)
              & (bank.ptr_frame < num_frames))
    ptrs = jnp.concatenate([bank.cond_ptr, bank.ptr], axis=1)  # (B, Kc + P, D)
    ptr_valid = jnp.concatenate([cond_ptr_ok, ptr_ok], axis=1)
    split = d // c
    if not cfg.use_obj_ptrs_in_encoder:
        ptrs, ptr_valid = ptrs[:, :0], ptr_valid[:, :0]
    ptr_tokens = ptrs.reshape(b, -1, c)  # each pointer -> D / C consecutive tokens
    ptr_tok_valid = jnp.repeat(ptr_valid, split, axis=1)

    memory = jnp.concatenate([memory_sp, ptr_tokens], axis=1)
    memory_pos = jnp.concatenate([pos_sp, jnp.zeros_like(ptr_tokens)], axis=1)
    key_valid = jnp.concatenate([valid_sp, ptr_tok_valid], axis=1)
    extra = None
    if n_extra:
        n_ptr = ptr_tokens.shape[1]
        extra = jnp.concatenate([
            jnp.concatenate([extra_sp, jnp.ones((b, f * h * w, 1), jnp.float32)], axis=-1),
            jnp.zeros((b, n_ptr, n_extra + 1), jnp.float32)], axis=1)
    return memory, memory_pos, key_valid, ptr_tokens.shape[1], extra


def rebuild_rings(cfg: EfficientTAMConfig, bank: MemoryBank, frame_outputs: dict, frame_idx: int,
                  reverse: bool = False) -> MemoryBank:
    """Refill the recent and pointer rings for `frame_idx` from a host-side store.

    The rings keep the most recently *written* frames, which is what sequential tracking needs.
    When a step jumps elsewhere in the video (a correction on an earlier frame, reverse
    tracking after forward tracking) the predictor rebuilds them from its per-frame store,
    as the official predictor looks its dicts up. frame_outputs: {frame: (feats (B, h, w, C),
    obj_ptr (B, D))} of tracked (non-conditioning) frames, every object. Host-level, eager.
    """
    bank = bank.replace(recent_valid=jnp.zeros_like(bank.recent_valid),
                        ptr_valid=jnp.zeros_like(bank.ptr_valid))
    step = 1 if reverse else -1
    for dist in range(cfg.max_obj_ptrs_in_encoder - 1, 0, -1):  # far to near: near ones win
        t = frame_idx + step * dist
        if t in frame_outputs:
            feats, ptr = frame_outputs[t]
            bank = write_frame(bank, t, jnp.asarray(feats), jnp.asarray(ptr), is_cond=False)
    return bank
