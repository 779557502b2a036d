"""Host-side state of a video session: prompts and per-frame outputs, per object (spec §6).

The official predictor keeps, per object, dicts {frame: output} of conditioning (prompted) and
non-conditioning (tracked) frames, plus temporary outputs of frames prompted since the last
propagation. `VideoState` keeps the same bookkeeping, but an output is a reference
`(record, row)` into the batched arrays the compiled step returned (no per-object slicing on
the hot path), and the device-side `MemoryBank` for a step is assembled from it by
`bank_from_store` only when a step jumps (propagation start, a prompt).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from tam_jax.configs import EfficientTAMConfig
from tam_jax.memory import MemoryBank, empty_bank

COND, NON_COND = "cond", "non_cond"


@dataclasses.dataclass(frozen=True)
class FrameOutput:
    """One object's output on one frame: row `row` of the batched arrays in `record`.

    record keys: pred_masks (B, 1, 4h, 4w) low-res logits, obj_ptr (B, D),
    object_score_logits (B, 1), maskmem (B, h, w, C) in the bank dtype or None (a prompted
    frame before propagation encodes its memory).
    """

    record: dict[str, Any]
    row: int

    def get(self, key: str):
        v = self.record[key]
        return None if v is None else v[self.row:self.row + 1]

    def with_memory(self, maskmem_1hwc) -> FrameOutput:
        rec = {k: self.get(k) for k in self.record}
        rec["maskmem"] = maskmem_1hwc
        return FrameOutput(rec, 0)


def _new_outputs():
    return {COND: {}, NON_COND: {}}


@dataclasses.dataclass
class VideoState:
    """Everything one video session holds (the official `inference_state`)."""

    frames: np.ndarray  # (T, S, S, 3) uint8, model-size frames
    video_height: int
    video_width: int
    obj_ids: list = dataclasses.field(default_factory=list)
    point_inputs: list = dataclasses.field(default_factory=list)  # per obj: {t: (xy, labels)}
    mask_inputs: list = dataclasses.field(default_factory=list)  # per obj: {t: (S, S) float}
    outputs: list = dataclasses.field(default_factory=list)  # per obj: {cond|non_cond: {t: out}}
    temp_outputs: list = dataclasses.field(default_factory=list)  # same, since last propagation
    tracked: list = dataclasses.field(default_factory=list)  # per obj: {t: reverse}
    feature_cache: dict = dataclasses.field(default_factory=dict)  # {t: (feats, pos)}, 1 frame

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_objects(self) -> int:
        return len(self.obj_ids)

    def obj_idx(self, obj_id, create: bool = False) -> int:
        """Index of `obj_id`; a new object gets the next index when `create` (any time)."""
        if obj_id in self.obj_ids:
            return self.obj_ids.index(obj_id)
        if not create:
            raise KeyError(f"unknown object id {obj_id!r}; known ids: {self.obj_ids}")
        self.obj_ids.append(obj_id)
        for store in (self.point_inputs, self.mask_inputs, self.tracked):
            store.append({})
        self.outputs.append(_new_outputs())
        self.temp_outputs.append(_new_outputs())
        return len(self.obj_ids) - 1

    def drop_object(self, idx: int) -> None:
        del self.obj_ids[idx]
        for store in (self.point_inputs, self.mask_inputs, self.outputs, self.temp_outputs,
                      self.tracked):
            del store[idx]

    def clear(self) -> None:
        """Forget every object, prompt and output (the frames stay)."""
        for store in (self.obj_ids, self.point_inputs, self.mask_inputs, self.outputs,
                      self.temp_outputs, self.tracked):
            store.clear()

    def latest_output(self, idx: int, frame_idx: int, key: str | None = None):
        """The newest output of object `idx` on a frame: temporary, then cond, then non-cond."""
        temp = self.temp_outputs[idx]
        out = temp[key].get(frame_idx) if key else (temp[COND].get(frame_idx)
                                                   or temp[NON_COND].get(frame_idx))
        if out is None:
            out = self.outputs[idx][COND].get(frame_idx)
        if out is None:
            out = self.outputs[idx][NON_COND].get(frame_idx)
        return out


def bank_from_store(cfg: EfficientTAMConfig, state: VideoState, obj_indices, frame_idx: int,
                    reverse: bool, cond_capacity: int) -> MemoryBank:
    """The memory bank objects `obj_indices` attend to on `frame_idx`, from the host store.

    Conditioning slots: every conditioning frame of the object (in prompt order). Recent and
    pointer rings: the stored tracked frames 1 .. max_obj_ptrs - 1 behind `frame_idx` in the
    tracking direction, in their ring slots (frame % size), as sequential tracking leaves them.
    """
    template = empty_bank(cfg, len(obj_indices), cond_capacity)
    arrs = {f.name: np.array(getattr(template, f.name)) for f in dataclasses.fields(template)}
    r, p = cfg.num_maskmem - 1, cfg.max_obj_ptrs_in_encoder
    step = 1 if reverse else -1
    for i, obj in enumerate(obj_indices):
        cond = state.outputs[obj][COND]
        if len(cond) > cond_capacity:
            raise ValueError(
                f"object {state.obj_ids[obj]!r} has {len(cond)} conditioning (prompted) frames "
                f"{sorted(cond)}, more than the memory's {cond_capacity} slots; build the "
                f"predictor with a larger cond_capacity or clear prompts on some frames")
        for k, (t, out) in enumerate(cond.items()):
            arrs["cond_feats"][i, k] = np.asarray(out.get("maskmem"))[0]
            arrs["cond_ptr"][i, k] = np.asarray(out.get("obj_ptr"))[0]
            arrs["cond_frame"][i, k], arrs["cond_valid"][i, k] = t, True
        non_cond = state.outputs[obj][NON_COND]
        for dist in range(1, p):
            out = non_cond.get(frame_idx + step * dist)
            if out is None:
                continue
            t = frame_idx + step * dist
            if dist <= r:
                arrs["recent_feats"][i, t % r] = np.asarray(out.get("maskmem"))[0]
                arrs["recent_frame"][i, t % r], arrs["recent_valid"][i, t % r] = t, True
            arrs["ptr"][i, t % p] = np.asarray(out.get("obj_ptr"))[0]
            arrs["ptr_frame"][i, t % p], arrs["ptr_valid"][i, t % p] = t, True
    return jax.device_put(MemoryBank(**arrs))
