"""`VideoPredictor`: the official video predictor's API and semantics over a compiled step.

Same methods and meaning as the official `EfficientTAMVideoPredictor` (SAM 2's December 2024
predictor; spec §6, §10):

    state = predictor.init_state(video)        # JPEG folder, .mp4, or (T, H, W, 3) uint8
    predictor.add_new_points_or_box(state, frame_idx, obj_id, points, labels, box=...)
    predictor.add_new_mask(state, frame_idx, obj_id, mask)
    for frame_idx, obj_ids, mask_logits in predictor.propagate_in_video(state): ...

- A prompt on a frame the object was never tracked on makes it a conditioning frame (no
  memory, like SAM); on a tracked frame it is a correction: the memory is attended to and the
  previous low-res logits (clamped to +-32) go in as a mask prompt.
- Prompted frames get their memory encoded (binarised masks) when propagation starts.
- Objects may be added at any time, also after tracking started; an object first prompted
  later is tracked over the whole propagation range, as the official does.
- Tracking runs all objects of a frame in one compiled call (objects are the batch axis of
  `track_step`); a frame that is a conditioning frame of some object re-uses that object's
  prompted output and does not overwrite its memory.

Returned masks are numpy logits (N_obj, 1, H, W) at the video's resolution. No hole filling:
the official one needs a CUDA extension and is skipped on CPU as well.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tam_jax.configs import EfficientTAMConfig
from tam_jax.memory import DEFAULT_COND_CAPACITY, empty_bank
from tam_jax.models.tam import NO_OBJ_SCORE, EfficientTAM, resize_bilinear
from tam_jax.predictors import IMAGENET_MEAN, IMAGENET_STD, with_conv_impl
from tam_jax.track import encode_frame_memory, track_step
from tam_jax.video_io import load_video_frames
from tam_jax.video_state import COND, NON_COND, FrameOutput, VideoState, bank_from_store

# Previous logits fed back on a correction are clamped like the official (spec §10).
PREV_LOGIT_CLAMP = 32.0


class VideoPredictor:
    """Track objects through a video from clicks, boxes and masks."""

    def __init__(self, cfg: EfficientTAMConfig, params: Any,
                 cond_capacity: int = DEFAULT_COND_CAPACITY, progress: bool = True,
                 conv_impl: str | None = None):
        """conv_impl: how convolutions compile ("xla" / "matmul"); None: "matmul" on a CPU
        backend when the config says "xla", else the config's (`predictors.with_conv_impl`:
        the same numbers to float rounding, the memory encoder ~3x faster on CPU). On a CPU
        backend the memory cross-attention of several objects also runs one object at a time
        (`attention_batch_loop`: the same result, faster on XLA:CPU)."""
        cfg = with_conv_impl(cfg, conv_impl)
        if jax.default_backend() == "cpu":  # several objects: one memory attention at a time
            cfg = dataclasses.replace(cfg, attention_batch_loop=True)
        self.cfg = cfg
        self.params = jax.device_put(params)
        self.cond_capacity = cond_capacity
        self.progress = progress
        self.image_size = cfg.image_size

    # ------------------------------------------------------------------ compiled pieces
    @functools.partial(jax.jit, static_argnums=0)
    def _encode_frame(self, params, frame_uint8):
        """(S, S, 3) uint8 model-size frame -> features and PE (1, h, w, 256)."""
        x = (frame_uint8.astype(jnp.float32)[None] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return EfficientTAM(self.cfg).apply({"params": params}, x,
                                            method=EfficientTAM.encode_image)

    @functools.partial(jax.jit, static_argnums=0,
                       static_argnames=("is_init_cond_frame", "reverse"))
    def _prompt_step(self, params, bank, feats, pos, frame_idx, num_frames, coords, labels,
                     mask, prev_logits, *, is_init_cond_frame, reverse):
        """One object, one prompted frame; memory is encoded later (at propagation)."""
        out, _ = track_step(self.cfg, params, bank, feats, pos, frame_idx, num_frames, coords,
                            labels, mask, prev_logits, is_init_cond_frame=is_init_cond_frame,
                            reverse=reverse, run_mem_encoder=False)
        return _record(out)

    @functools.partial(jax.jit, static_argnums=0)
    def _prompted_memory(self, params, feats, low_res_masks):
        """Memory of a prompted frame from its stored low-res logits (binarised, spec §6.4)."""
        s = self.image_size
        high = resize_bilinear(jnp.transpose(low_res_masks, (0, 2, 3, 1)), s, s)
        return encode_frame_memory(self.cfg, params, feats, jnp.transpose(high, (0, 3, 1, 2)),
                                   binarize=True)

    @functools.partial(jax.jit, static_argnums=0, static_argnames=("reverse", "video_hw"),
                       donate_argnames=("bank",))
    def _track_frame(self, params, bank, feats, pos, frame_idx, num_frames, reuse, reuse_masks,
                     *, reverse, video_hw):
        """All objects on an unprompted frame. reuse (B,) bool: objects for which the frame is
        a conditioning frame keep their prompted output `reuse_masks` and their memory."""
        b = bank.num_objects
        rep = lambda x: jnp.broadcast_to(x, (b, *x.shape[1:]))
        out, bank = track_step(self.cfg, params, bank, rep(feats), rep(pos), frame_idx,
                               num_frames, write_mask=~reuse, reverse=reverse, store="recent")
        rec = _record(out)
        masks = jnp.where(reuse[:, None, None, None], reuse_masks, rec["pred_masks"])
        return rec, bank, _to_video(masks, video_hw)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def _video_res(self, low_res_masks, video_hw):
        return _to_video(low_res_masks, video_hw)

    # ------------------------------------------------------------------ session
    def init_state(self, video) -> VideoState:
        """Load a video (JPEG folder, .mp4 path or (T, H, W, 3) uint8 array) into a session."""
        frames, h, w = load_video_frames(video, self.image_size)
        state = VideoState(frames=frames, video_height=h, video_width=w)
        self._features(state, 0)  # as the official: frame 0 is where users click first
        return state

    def reset_state(self, state: VideoState) -> None:
        """Remove every object, prompt and tracking result (the video stays loaded)."""
        state.clear()

    def _features(self, state: VideoState, frame_idx: int):
        cached = state.feature_cache.get(frame_idx)
        if cached is None:
            cached = self._encode_frame(self.params, jnp.asarray(state.frames[frame_idx]))
            state.feature_cache = {frame_idx: cached}  # latest frame only, as the official
        return cached

    # ------------------------------------------------------------------ prompts
    def add_new_points_or_box(self, state: VideoState, frame_idx: int, obj_id, points=None,
                              labels=None, clear_old_points: bool = True,
                              normalize_coords: bool = True, box=None):
        """Clicks (points (N, 2) x, y with labels (N,) 1 fg / 0 bg) and/or a box (x0, y0, x1,
        y1) for one object on one frame, in video pixels (or [0, 1] without normalize_coords).
        Returns (frame_idx, obj_ids, mask logits (N_obj, 1, H, W)) of that frame."""
        frame_idx = self._check_frame_idx(state, frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        if box is not None and not clear_old_points:
            raise ValueError("cannot add a box without clearing old points: the box must come "
                             "before any click (use clear_old_points=True)")
        xy, lab = self._prompt_points(state, points, labels, box, normalize_coords)
        idx = state.obj_idx(obj_id, create=True)
        if not clear_old_points and frame_idx in state.point_inputs[idx]:
            old_xy, old_lab = state.point_inputs[idx][frame_idx]
            xy, lab = np.concatenate([old_xy, xy]), np.concatenate([old_lab, lab])
        state.point_inputs[idx][frame_idx] = (xy, lab)
        state.mask_inputs[idx].pop(frame_idx, None)
        return self._run_prompt(state, frame_idx, idx, xy, lab, None)

    def add_new_mask(self, state: VideoState, frame_idx: int, obj_id, mask,
                     allow_empty: bool = False):
        """A 2-D mask (bool or 0/1, any size; resized to the model input) for one object on one
        frame. An all-background mask is refused unless `allow_empty` (it then marks the
        object absent on that frame). Returns like `add_new_points_or_box`."""
        frame_idx = self._check_frame_idx(state, frame_idx)
        m = self._mask_input(frame_idx, obj_id, mask, allow_empty)
        idx = state.obj_idx(obj_id, create=True)
        state.mask_inputs[idx][frame_idx] = m
        state.point_inputs[idx].pop(frame_idx, None)
        return self._run_prompt(state, frame_idx, idx, None, None, m)

    def _mask_input(self, frame_idx, obj_id, mask, allow_empty) -> np.ndarray:
        """A user mask -> (S, S) float32 0/1 at the model size, validated."""
        m = np.asarray(mask)
        if m.ndim != 2 or m.size == 0:
            raise ValueError(f"mask for object {obj_id!r} on frame {frame_idx} must be a "
                             f"non-empty 2-D array, got shape {m.shape}")
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise ValueError(f"mask for object {obj_id!r} on frame {frame_idx} must be boolean "
                             f"or 0/1, got values in [{m.min()}, {m.max()}]")
        if not m.any() and not allow_empty:
            raise ValueError(f"mask for object {obj_id!r} on frame {frame_idx} has no "
                             "foreground pixel; pass allow_empty=True to mark it absent")
        s = self.image_size
        m = m.astype(np.float32)
        if m.shape != (s, s):  # antialiased bilinear then >= 0.5, as the official
            m = np.asarray(resize_bilinear(jnp.asarray(m)[None, :, :, None], s, s,
                                           antialias=True))[0, :, :, 0]
            m = (m >= 0.5).astype(np.float32)
        return m

    def _run_prompt(self, state, frame_idx, idx, xy, labels, mask):
        tracked = state.tracked[idx]
        is_init = frame_idx not in tracked
        reverse = False if is_init else tracked[frame_idx]
        key = COND if is_init else NON_COND
        prev = None
        if mask is None:
            before = state.latest_output(idx, frame_idx, key)
            if before is not None:
                prev = jnp.clip(jnp.transpose(before.get("pred_masks"), (0, 2, 3, 1)),
                                -PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)
        if is_init and self.cfg.directly_add_no_mem_embed:  # memory unused
            bank = self._empty_bank(1)
        else:
            bank = bank_from_store(self.cfg, state, [idx], frame_idx, reverse,
                                   self._cond_slots(state, [idx]))
        feats, pos = self._features(state, frame_idx)
        rec = self._prompt_step(
            self.params, bank, feats, pos, frame_idx, state.num_frames,
            None if xy is None else jnp.asarray(xy[None]),
            None if labels is None else jnp.asarray(labels[None]),
            None if mask is None else jnp.asarray(mask[None, :, :, None]), prev,
            is_init_cond_frame=is_init, reverse=reverse)
        state.temp_outputs[idx][key][frame_idx] = FrameOutput(rec, 0)
        return frame_idx, list(state.obj_ids), self._frame_masks(state, frame_idx, key)

    # ------------------------------------------------------------------ removal
    def clear_all_prompts_in_frame(self, state: VideoState, frame_idx: int, obj_id,
                                   need_output: bool = True):
        """Remove an object's clicks / mask on a frame; its output there, if any, stays as a
        tracked (non-conditioning) frame."""
        frame_idx = self._check_frame_idx(state, frame_idx)
        idx = state.obj_idx(obj_id)  # unknown ids are an error (the official creates them)
        state.point_inputs[idx].pop(frame_idx, None)
        state.mask_inputs[idx].pop(frame_idx, None)
        for key in (COND, NON_COND):
            state.temp_outputs[idx][key].pop(frame_idx, None)
        out = state.outputs[idx][COND].pop(frame_idx, None)
        if out is not None:
            state.outputs[idx][NON_COND][frame_idx] = out
            state.tracked[idx].pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in t[COND] for t in state.temp_outputs)
        return (frame_idx, list(state.obj_ids),
                self._frame_masks(state, frame_idx, COND if is_cond else NON_COND))

    def remove_object(self, state: VideoState, obj_id, strict: bool = False,
                      need_output: bool = True):
        """Forget an object. Returns (remaining obj_ids, [(frame_idx, masks)] of the frames
        where it had prompts)."""
        if obj_id not in state.obj_ids:
            if strict:
                raise KeyError(f"cannot remove object id {obj_id!r}: it does not exist; known "
                               f"ids: {state.obj_ids}")
            return list(state.obj_ids), []
        if state.num_objects == 1:
            state.clear()
            return [], []
        idx = state.obj_idx(obj_id)
        frames = sorted(set(state.point_inputs[idx]) | set(state.mask_inputs[idx]))
        for t in frames:
            self.clear_all_prompts_in_frame(state, t, obj_id, need_output=False)
        state.drop_object(idx)
        updated = []
        if need_output:
            for t in frames:
                is_cond = any(t in temp[COND] for temp in state.temp_outputs)
                updated.append((t, self._frame_masks(state, t, COND if is_cond else NON_COND)))
        return list(state.obj_ids), updated

    # ------------------------------------------------------------------ tracking
    def propagate_in_video(self, state: VideoState, start_frame_idx: int | None = None,
                           max_frame_num_to_track: int | None = None, reverse: bool = False):
        """Generator of (frame_idx, obj_ids, mask logits (N_obj, 1, H, W) numpy) over the video,
        from `start_frame_idx` (default: the earliest prompted frame) forward or in reverse."""
        self._preflight(state)
        t_total = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(t for out in state.outputs for t in out[COND])
        start_frame_idx = self._check_frame_idx(state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = t_total
        if not isinstance(max_frame_num_to_track, numbers.Integral) or max_frame_num_to_track < 0:
            raise ValueError(f"max_frame_num_to_track must be an int >= 0, "
                             f"got {max_frame_num_to_track!r}")
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end = min(start_frame_idx + max_frame_num_to_track, t_total - 1)
            order = range(start_frame_idx, end + 1)
        objs = list(range(state.num_objects))
        obj_ids = list(state.obj_ids)
        bank = bank_from_store(self.cfg, state, objs, start_frame_idx, reverse,
                               self._cond_slots(state, objs))
        hw = (state.video_height, state.video_width)
        lr = self.cfg.low_res_mask_size
        no_masks = jnp.zeros((len(objs), 1, lr, lr), jnp.float32)
        for t in tqdm(order, desc="propagate in video", disable=not self.progress):
            conds = [state.outputs[i][COND].get(t) for i in objs]
            reuse = np.array([c is not None for c in conds])
            reuse_masks = no_masks
            if reuse.any():
                reuse_masks = jnp.concatenate(
                    [no_masks[i:i + 1] if c is None else c.get("pred_masks")
                     for i, c in enumerate(conds)])
            feats, pos = self._features(state, t)
            rec, bank, video = self._track_frame(self.params, bank, feats, pos, t, t_total,
                                                 jnp.asarray(reuse), reuse_masks,
                                                 reverse=reverse, video_hw=hw)
            for i in objs:
                if not reuse[i]:
                    state.outputs[i][NON_COND][t] = FrameOutput(rec, i)
                state.tracked[i][t] = reverse
            yield t, obj_ids, np.asarray(video)

    def _preflight(self, state: VideoState) -> None:
        """Encode the memory of frames prompted since the last propagation and file them."""
        if state.num_objects == 0:
            raise RuntimeError("no points, boxes or masks were added for any object; "
                               "add prompts first")
        for idx in range(state.num_objects):
            for key in (NON_COND, COND):
                temp = state.temp_outputs[idx][key]
                for t, out in temp.items():
                    if out.get("maskmem") is None:
                        feats, _ = self._features(state, t)
                        out = out.with_memory(
                            self._prompted_memory(self.params, feats, out.get("pred_masks")))
                    state.outputs[idx][key][t] = out
                temp.clear()
            cond = state.outputs[idx][COND]
            if not cond:
                raise RuntimeError(f"no points, boxes or masks were added for object id "
                                   f"{state.obj_ids[idx]!r}; add prompts first")
            if len(cond) > self.cond_capacity:
                raise ValueError(
                    f"object {state.obj_ids[idx]!r} has {len(cond)} prompted frames "
                    f"{sorted(cond)}, more than the memory's {self.cond_capacity} conditioning "
                    "slots; build the predictor with a larger cond_capacity")
            for t in cond:
                state.outputs[idx][NON_COND].pop(t, None)

    # ------------------------------------------------------------------ helpers
    def _cond_slots(self, state: VideoState, objs) -> int:
        """Conditioning slots of the bank for a step: as many as the objects' prompted frames
        need (at most `cond_capacity`), so a one-prompt video does not attend over empty slots;
        one compile per distinct count."""
        return max(1, min(self.cond_capacity,
                          max(len(state.outputs[i][COND]) for i in objs)))

    def _empty_bank(self, num_objects: int):
        """An all-invalid bank (initial conditioning frames do not read memory)."""
        return empty_bank(self.cfg, num_objects, cond_capacity=1)

    def _frame_masks(self, state: VideoState, frame_idx: int, key: str) -> np.ndarray:
        """Every object's newest logits on a frame at video resolution (absent: -1024)."""
        lr = self.cfg.low_res_mask_size
        rows = []
        for idx in range(state.num_objects):
            out = state.latest_output(idx, frame_idx, key)
            rows.append(jnp.full((1, 1, lr, lr), NO_OBJ_SCORE, jnp.float32) if out is None
                        else out.get("pred_masks"))
        if not rows:
            return np.zeros((0, 1, state.video_height, state.video_width), np.float32)
        return np.asarray(self._video_res(jnp.concatenate(rows),
                                          (state.video_height, state.video_width)))

    @staticmethod
    def _check_frame_idx(state: VideoState, frame_idx) -> int:
        if not isinstance(frame_idx, numbers.Integral) or isinstance(frame_idx, bool):
            raise TypeError(f"frame_idx must be an int, got {type(frame_idx).__name__}")
        if not 0 <= frame_idx < state.num_frames:
            raise IndexError(f"frame_idx {frame_idx} is out of range: the video has "
                             f"{state.num_frames} frames (0..{state.num_frames - 1})")
        return int(frame_idx)

    def _prompt_points(self, state, points, labels, box, normalize):
        """Clicks and box -> model-input pixel coordinates (N, 2) and labels (N,)."""
        h, w = state.video_height, state.video_width
        bound = np.array([w, h], np.float32) if normalize else np.ones(2, np.float32)
        parts_xy, parts_lab = [], []
        if box is not None:
            b = np.asarray(box, np.float32)
            if b.size != 4:
                raise ValueError(f"box must hold 4 numbers (x0, y0, x1, y1), got shape {b.shape}")
            parts_xy.append(b.reshape(2, 2))
            parts_lab.append(np.array([2, 3], np.int32))
        if points is not None:
            xy = np.asarray(points, np.float32)
            lab = np.asarray(labels)
            if xy.ndim == 3 and xy.shape[0] == 1:
                xy = xy[0]
            if lab.ndim == 2 and lab.shape[0] == 1:
                lab = lab[0]
            if xy.ndim != 2 or xy.shape[1] != 2 or lab.shape != (xy.shape[0],):
                raise ValueError(f"points must be (N, 2) (x, y) with labels (N,), got "
                                 f"{np.shape(points)} and {np.shape(labels)}")
            if not np.isin(lab, (0, 1)).all():
                raise ValueError(f"click labels must be 1 (foreground) or 0 (background), got "
                                 f"{sorted(set(lab.tolist()))}; give boxes with box=")
            parts_xy.append(xy)
            parts_lab.append(lab.astype(np.int32))
        xy, lab = np.concatenate(parts_xy), np.concatenate(parts_lab)
        outside = ~np.all((xy >= 0) & (xy <= bound), axis=1) | ~np.isfinite(xy).all(axis=1)
        if outside.any():
            bad = xy[outside][0].tolist()
            raise ValueError(f"point {bad} is outside the frame: coordinates must lie in "
                             f"[0, {bound[0]:g}] x [0, {bound[1]:g}]"
                             + ("" if normalize else " (normalize_coords=False)"))
        return (xy / bound * self.image_size).astype(np.float32), lab


def _record(out: dict) -> dict:
    """The compact per-frame output the session keeps (the official `compact_current_out`)."""
    return dict(pred_masks=out["low_res_masks"].astype(jnp.float32), obj_ptr=out["obj_ptr"],
                object_score_logits=out["object_score_logits"],
                maskmem=out.get("maskmem_features"))


def _to_video(low_res_b1hw, video_hw):
    """Low-res logits (B, 1, 4h, 4w) -> (B, 1, H, W) bilinear, as the official output."""
    x = resize_bilinear(jnp.transpose(low_res_b1hw, (0, 2, 3, 1)), *video_hw)
    return jnp.transpose(x, (0, 3, 1, 2))


def build_video_predictor(variant: str, checkpoint: str | os.PathLike | None = None,
                          cond_capacity: int = DEFAULT_COND_CAPACITY, progress: bool = True,
                          **config_overrides) -> VideoPredictor:
    """A `VideoPredictor` for a released (or test) variant; checkpoint as for the image
    predictor (None: random weights; an official `.pt`; a tam_jax model directory).
    `config_overrides`: top-level config fields, e.g. matmul_precision="bfloat16" (bf16 matmul
    operands: ~1.5x faster tracking on a CPU with AVX512-BF16, docs/benchmarks.md)."""
    from tam_jax.configs import override
    from tam_jax.predictors import load_weights

    cfg, params = load_weights(variant, checkpoint)
    if config_overrides:
        cfg = override(cfg, config_overrides).validate()
    return VideoPredictor(cfg, params, cond_capacity=cond_capacity, progress=progress)
