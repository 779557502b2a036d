"""`StreamingTracker`: frames arrive one at a time (camera, network), memory stays bounded.

The offline `VideoPredictor` keeps every frame's output (as the official does) so it can jump
around the video; a stream cannot. Here the only memory is the fixed-shape `MemoryBank` (per
object: `cond_capacity` prompted frames, the 6 most recent tracked frames, 16 object
pointers) plus the current frame's features and outputs, so a stream of any length costs the
same memory.

    tracker = StreamingTracker.from_predictor(predictor)
    for frame in camera:
        idx, obj_ids, masks = tracker.add_frame(frame)          # track existing objects
        if user_clicked:
            tracker.add_new_points_or_box(obj_id, points=..., labels=...)   # on this frame

Prompts always apply to the latest frame. A prompt for a new object makes the frame its
conditioning frame; a prompt for an object already tracked on this frame is a correction
(memory attended to, previous logits fed back, the frame's memory replaced), as in the
offline predictor. Prompted frames get their memory encoded (binarised) when the next frame
arrives. Same prompts on the same frames give the same masks as the offline predictor
propagating forward (the pointer window uses `max_frames`, like the video length offline).
An object can take `cond_capacity` prompted frames; one more is refused with a clear error.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tam_jax.memory import MemoryBank, empty_bank, write_frame
from tam_jax.video_io import VideoInputError, _check_frame, resize_frame
from tam_jax.video_predictor import PREV_LOGIT_CLAMP, VideoPredictor
from tam_jax.video_state import VideoState

# Stands in for the video length: only min(length, 16) is used (pointer window).
UNBOUNDED_FRAMES = 2**31 - 1


class StreamingTracker:
    """Online multi-object tracking with a bounded memory. See the module docstring."""

    def __init__(self, predictor: VideoPredictor, max_frames: int = UNBOUNDED_FRAMES):
        self.p = predictor
        self.cfg = predictor.cfg
        self.max_frames = max_frames
        self.reset()

    @classmethod
    def from_predictor(cls, predictor: VideoPredictor, **kwargs) -> StreamingTracker:
        return cls(predictor, **kwargs)

    def reset(self) -> None:
        """Forget every object and frame."""
        self.obj_ids: list = []
        self.bank: MemoryBank | None = None
        self.frame_idx = -1
        self.video_hw: tuple[int, int] | None = None
        self._feats = self._pos = None
        self._low_res = None  # (B, 1, 4h, 4w) newest logits of every object on this frame
        self._tracked_now: set[int] = set()  # objects tracked (not prompted first) this frame
        self._pending: dict[int, tuple[dict, bool]] = {}  # obj -> (record, is_cond)
        self._points: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ frames
    def add_frame(self, frame) -> tuple[int, list, np.ndarray]:
        """Track every object on a new (H, W, 3) uint8 RGB frame.

        Returns (frame_idx, obj_ids, mask logits (N_obj, 1, H, W) numpy)."""
        arr = _check_frame(frame, f"stream frame {self.frame_idx + 1}")
        if self.video_hw is None:
            self.video_hw = arr.shape[:2]
        elif arr.shape[:2] != self.video_hw:
            raise VideoInputError(f"stream frame {self.frame_idx + 1}: size {arr.shape[:2]} "
                                  f"differs from the stream's {self.video_hw}")
        if self.frame_idx + 1 >= self.max_frames:
            raise RuntimeError(f"the stream reached max_frames={self.max_frames}")
        self._commit_pending()
        self.frame_idx += 1
        self._points.clear()
        small = resize_frame(arr, self.cfg.image_size)
        self._feats, self._pos = self.p._encode_frame(self.p.params, jnp.asarray(small))
        b = len(self.obj_ids)
        if b == 0:
            self._low_res = None
            return self.frame_idx, [], np.zeros((0, 1, *self.video_hw), np.float32)
        lr = self.cfg.low_res_mask_size
        no_reuse = jnp.zeros((b,), bool)
        rec, self.bank, video = self.p._track_frame(
            self.p.params, self.bank, self._feats, self._pos, self.frame_idx, self.max_frames,
            no_reuse, jnp.zeros((b, 1, lr, lr), jnp.float32), reverse=False,
            video_hw=self.video_hw)
        self._low_res = rec["pred_masks"]
        self._tracked_now = set(range(b))
        return self.frame_idx, list(self.obj_ids), np.asarray(video)

    # ------------------------------------------------------------------ prompts
    def add_new_points_or_box(self, obj_id, points=None, labels=None, box=None,
                              clear_old_points: bool = True, normalize_coords: bool = True):
        """Clicks / box for `obj_id` on the latest frame (video pixels). Returns like
        `add_frame`, for that frame."""
        self._require_frame()
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        if box is not None and not clear_old_points:
            raise ValueError("cannot add a box without clearing old points")
        xy, lab = self.p._prompt_points(self._geometry(), points, labels, box, normalize_coords)
        idx = self._obj(obj_id)
        if not clear_old_points and idx in self._points:
            old_xy, old_lab = self._points[idx]
            xy, lab = np.concatenate([old_xy, xy]), np.concatenate([old_lab, lab])
        self._points[idx] = (xy, lab)
        return self._prompt(idx, xy, lab, None)

    def add_new_mask(self, obj_id, mask, allow_empty: bool = False):
        """A 2-D mask for `obj_id` on the latest frame. Returns like `add_frame`."""
        self._require_frame()
        m = self.p._mask_input(self.frame_idx, obj_id, mask, allow_empty)
        idx = self._obj(obj_id)
        self._points.pop(idx, None)
        return self._prompt(idx, None, None, m)

    def remove_object(self, obj_id) -> list:
        """Stop tracking `obj_id`; returns the remaining ids."""
        if obj_id not in self.obj_ids:
            raise KeyError(f"unknown object id {obj_id!r}; known ids: {self.obj_ids}")
        i = self.obj_ids.index(obj_id)
        keep = np.array([j for j in range(len(self.obj_ids)) if j != i], np.int32)
        self.bank = jax.tree.map(lambda x: x[keep], self.bank) if len(keep) else None
        if self._low_res is not None:
            self._low_res = self._low_res[keep] if len(keep) else None
        shift = lambda d: {(j - (j > i)): v for j, v in d.items() if j != i}
        self._pending, self._points = shift(self._pending), shift(self._points)
        self._tracked_now = {j - (j > i) for j in self._tracked_now if j != i}
        del self.obj_ids[i]
        return list(self.obj_ids)

    # ------------------------------------------------------------------ internals
    def _prompt(self, idx, xy, labels, mask):
        is_init = idx not in self._tracked_now  # a new object; else a correction
        prev = None
        if mask is None and self._low_res is not None and (
                idx in self._pending or idx in self._tracked_now):
            prev = jnp.clip(jnp.transpose(self._low_res[idx:idx + 1], (0, 2, 3, 1)),
                            -PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP)
        bank = jax.tree.map(lambda x: x[idx:idx + 1], self.bank)
        rec = self.p._prompt_step(
            self.p.params, bank, self._feats, self._pos, self.frame_idx, self.max_frames,
            None if xy is None else jnp.asarray(xy[None]),
            None if labels is None else jnp.asarray(labels[None]),
            None if mask is None else jnp.asarray(mask[None, :, :, None]), prev,
            is_init_cond_frame=is_init, reverse=False)
        self._pending[idx] = (rec, is_init)
        self._low_res = self._low_res.at[idx].set(rec["pred_masks"][0])
        video = self.p._video_res(self._low_res, self.video_hw)
        return self.frame_idx, list(self.obj_ids), np.asarray(video)

    def _obj(self, obj_id) -> int:
        """Index of obj_id; a new object gets an empty memory row."""
        if obj_id in self.obj_ids:
            return self.obj_ids.index(obj_id)
        row = empty_bank(self.cfg, 1, cond_capacity=1)
        lr = self.cfg.low_res_mask_size
        no_mask = jnp.zeros((1, 1, lr, lr), jnp.float32)
        if self.bank is None:
            self.bank, self._low_res = row, no_mask
        else:
            self.bank = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), self.bank, row)
            self._low_res = jnp.concatenate([self._low_res, no_mask])
        self.obj_ids.append(obj_id)
        return len(self.obj_ids) - 1

    def _commit_pending(self) -> None:
        """Encode the memory of the frame's prompted objects and write it into the bank."""
        for idx, (rec, is_cond) in sorted(self._pending.items()):
            maskmem = self.p._prompted_memory(self.p.params, self._feats, rec["pred_masks"])
            self.bank = _write_row(self.bank, self.frame_idx, maskmem, rec["obj_ptr"], idx,
                                   is_cond)
        self._pending.clear()

    def _geometry(self) -> VideoState:  # what `_prompt_points` reads: the frame size
        h, w = self.video_hw
        return VideoState(frames=np.zeros((self.frame_idx + 1, 0, 0, 3), np.uint8),
                          video_height=h, video_width=w)

    def _require_frame(self):
        if self.frame_idx < 0:
            raise RuntimeError("add_frame(frame) first: prompts apply to the latest frame")


@functools.partial(jax.jit, static_argnames=("is_cond",))
def _write_row(bank, frame_idx, feats_1hwc, ptr_1d, row, is_cond):
    b = bank.num_objects
    rep = lambda x: jnp.broadcast_to(x, (b, *x.shape[1:]))
    return write_frame(bank, frame_idx, rep(feats_1hwc), rep(ptr_1d), is_cond=is_cond,
                       write_mask_b=jnp.arange(b) == row)
