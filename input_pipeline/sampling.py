"""Which frames and objects a training example uses: SAM 2's samplers (data_and_eval.md §2, §1.4).

Works on TFDS records (`tfds.data_source` dicts) and RLE areas only; nothing is decoded here.

SA-V (`sample_clip`): a uniform start, `num_frames` consecutive annotated (6 fps) frames
(or, with `max_skip` > 1, frames with random gaps of 1 .. max_skip annotated frames: the
"max skip" sampling of STM / XMem-style VOS training, off in SAM 2's recipe), reversed with
p = `reverse_p`; the objects visible in the clip's first frame (after the
reversal), up to `max_objects` of them drawn without replacement. A start whose first frame
shows nothing is redrawn (up to `max_starts` times, as SAM 2's 1000).

SA-1B (`sample_masks`): masks with area 0 or covering more than `max_area_frac` of the image are
dropped (the paper's 90 % filter), then up to `max_masks` drawn without replacement.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pycocotools import mask as coco_mask


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """SA-V clip sampling (SAM 2: 8 frames, 3 objects, reverse p = 0.5)."""

    num_frames: int = 8
    max_objects: int = 3
    reverse_p: float = 0.5
    max_starts: int = 1000
    # a video that cannot give a clip (too short, nothing visible) is replaced by another
    # record drawn from the same rng, up to this many times (SAM 2: 100)
    max_records: int = 100
    # gaps between a clip's frames drawn from 1 .. max_skip annotated frames (1: consecutive,
    # SAM 2); capped per video so that the clip fits: more motion per step than consecutive
    # frames, so that tracking cannot be learnt as copying the previous mask in place
    max_skip: int = 1

    def __post_init__(self):
        if self.num_frames < 1 or self.max_objects < 1 or self.max_skip < 1:
            raise ValueError(f"num_frames, max_objects and max_skip must be >= 1: {self}")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """SA-1B sampling (paper: 64 masks per image, masks over 90 % of the image dropped)."""

    max_masks: int = 64
    max_area_frac: float = 0.9
    max_records: int = 100

    def __post_init__(self):
        if self.max_masks < 1 or not 0 < self.max_area_frac <= 1:
            raise ValueError(f"bad image sampling config: {self}")


@dataclasses.dataclass(frozen=True)
class ClipChoice:
    """positions: indices into the record's frames, in clip order (reversed when `reversed`);
    objects: indices into the record's objects."""

    positions: tuple[int, ...]
    objects: tuple[int, ...]
    reversed: bool


def _areas(rles: list[bytes], h: int, w: int) -> np.ndarray:
    return coco_mask.area([{"size": [h, w], "counts": c} for c in rles]).astype(np.int64)


def sample_clip(record: dict, rng: np.random.Generator, cfg: ClipConfig) -> ClipChoice | None:
    """-> the clip, or None when this video cannot give one (fewer than num_frames frames, or
    no start with a visible object within max_starts draws)."""
    n_t = len(record["frame_idx"])
    n_obj = int(record["num_objects"])
    if n_t < cfg.num_frames or n_obj == 0:
        return None
    h, w = int(record["orig_height"]), int(record["orig_width"])
    rles = record["masklet_rles"]
    # the largest gap with which any draw of gaps fits the video
    skip = min(cfg.max_skip, (n_t - 1) // max(cfg.num_frames - 1, 1))
    for _ in range(cfg.max_starts):
        if skip > 1:
            offsets = np.concatenate([[0], np.cumsum(rng.integers(1, skip, cfg.num_frames - 1,
                                                                   endpoint=True))])
            start = int(rng.integers(0, n_t - int(offsets[-1])))
            positions = [start + int(o) for o in offsets]
        else:
            start = int(rng.integers(0, n_t - cfg.num_frames + 1))
            positions = list(range(start, start + cfg.num_frames))
        reverse = bool(rng.random() < cfg.reverse_p)
        if reverse:
            positions.reverse()
        first = positions[0]
        visible = np.flatnonzero(_areas(rles[first * n_obj:(first + 1) * n_obj], h, w) > 0)
        if len(visible):
            k = min(len(visible), cfg.max_objects)
            objects = sorted(int(o) for o in rng.choice(visible, size=k, replace=False))
            return ClipChoice(tuple(positions), tuple(objects), reverse)
    return None


def sample_masks(record: dict, rng: np.random.Generator, cfg: ImageConfig) -> tuple[int, ...]:
    """-> indices of the masks used (sorted; empty when none passes the filters)."""
    area = np.asarray(record["mask_area"], np.int64)
    total = int(record["height"]) * int(record["width"])
    keep = np.flatnonzero((area > 0) & (area < cfg.max_area_frac * total))  # as SAM 2
    if len(keep) > cfg.max_masks:
        keep = np.sort(rng.choice(keep, size=cfg.max_masks, replace=False))
    return tuple(int(k) for k in keep)
