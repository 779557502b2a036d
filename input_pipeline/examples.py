"""TFDS record -> one fixed-shape training example (Grain `RandomMap` transforms).

    VideoClip   SA-V / DAVIS record -> T = num_frames frames, O = max_objects objects
    ImageSample SA-1B record        -> T = 1 frame,            O = max_masks objects

Every example, whatever the dataset (S = resolution):
    images     uint8 (T, S, S, 3) RGB            (float32, normalised, with normalize="host")
    masks      bool (T, O, S, S)                 (uint8 (T, O, S, S // 8) with pack_masks:
                                                  np.packbits along the last axis)
    obj_valid  bool (O,)      real objects first, then padding (all-zero masks)
    obj_ids    int32 (O,)     the dataset's object / annotation ids, -1 for padding
    frame_idx  int32 (T,)     24 fps frame index of each clip frame (DAVIS: frame number;
                              SA-1B: 0)
    record_id  int32 ()       numeric video id (sav_000123 -> 123) / SA-1B image id
    orig_hw    int32 (2,)     size of the original video / image

A record that cannot give an example (a video shorter than the clip, an image with no usable
mask) is replaced by another record of the same source drawn from the record's own rng (SAM 2
does the same), so the example for a given index stays deterministic.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import cv2
import grain
import numpy as np
from pycocotools import mask as coco_mask

from input_pipeline import augment, jpeg, rle_gather, sampling

NORMALIZE = ("device", "host")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """How examples leave the host. normalize: "device" (uint8 images, 4x less to transfer;
    `input_pipeline.device.model_images` normalises on the accelerator) or "host" (float32).
    pack_masks: bit-pack masks along their last axis (8x less; `device.unpack_masks`)."""

    normalize: str = "device"
    pack_masks: bool = False

    def __post_init__(self):
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")


def numeric_id(name: bytes | str) -> int:
    """`sav_000123` -> 123; a name without digits -> a stable 31-bit hash."""
    text = name.decode() if isinstance(name, bytes) else str(name)
    digits = re.findall(r"\d+", text)
    if digits:
        return int(digits[-1]) % 2**31
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def _decode_rle(counts: bytes, hw: tuple[int, int]) -> np.ndarray:
    """-> uint8 (H, W) in Fortran order (pycocotools'; warped as such, no reordering copy)."""
    return coco_mask.decode({"size": list(hw), "counts": counts})


def render(frames: list[bytes], frame_masks: list[list[bytes]], mask_hw: tuple[int, int],
           params: augment.ClipParams, cfg: augment.AugmentConfig,
           max_objects: int, output: OutputConfig) -> dict:
    """Decode and augment T frames with their masks.

    frames: T JPEGs; frame_masks: per frame, the RLE counts of each used object (same count n
    <= max_objects in every frame) at mask_hw. -> {"images", "masks", "obj_valid"} (the
    other fields are the caller's).
    """
    s = cfg.resolution
    n_t, n_obj = len(frames), len(frame_masks[0])
    decoded = [jpeg.decode_at_least(f, s) for f in frames]
    frame_hw = decoded[0].shape[:2]
    masks = np.zeros((n_t, max_objects, s, s), np.uint8)
    fwd = augment.geometry(params, frame_hw, s)
    mfwd = augment.mask_forward(fwd, frame_hw, mask_hw)
    done = 0  # frames whose masks are in place
    if augment.gather_indices(mfwd, mask_hw, s) is None:
        # an affine: SAM 2 (num_tentatives = 1) drops it when it empties a first-frame mask,
        # which takes the first frame's full masks
        raw_first = [_decode_rle(c, mask_hw) for c in frame_masks[0]]
        for k, m in enumerate(raw_first):
            augment.warp_mask_fortran(m, mfwd, s, out=masks[0, k])
        if any(raw_first[k].any() and not masks[0, k].any() for k in range(n_obj)):
            params = params.without_affine()
            fwd = augment.geometry(params, frame_hw, s)
            mfwd = augment.mask_forward(fwd, frame_hw, mask_hw)
            for k, m in enumerate(raw_first):
                augment.warp_mask_fortran(m, mfwd, s, out=masks[0, k])
        done = 1
    picks = augment.gather_indices(mfwd, mask_hw, s)
    # resize / flip: every mask straight from its runs to the output grid, never a full-size
    # mask (rle_gather: 0.6 ms instead of 4.1 for an SA-1B mask); an affine: full decode + warp
    grid = None if picks is None else rle_gather.Grid(*picks)
    for t in range(done, n_t):
        for k in range(n_obj):
            if grid is not None:
                rle_gather.decode_gather(frame_masks[t][k], mask_hw, grid, out=masks[t, k])
            else:
                augment.warp_mask_fortran(_decode_rle(frame_masks[t][k], mask_hw), mfwd, s,
                                          out=masks[t, k])
    images = np.empty((n_t, s, s, 3), np.uint8)
    for t in range(n_t):
        if decoded[t].shape[:2] != frame_hw:
            raise ValueError(f"frame {t} is {decoded[t].shape[:2]}, frame 0 is {frame_hw}")
        image = augment.warp_image(decoded[t], fwd, s)
        images[t] = augment.apply_colour(image, augment.frame_colour_ops(params, t))
    if params.frame_shifts:
        augment.shift_frames(images, masks, params.frame_shifts)
    valid = np.zeros(max_objects, bool)
    valid[:n_obj] = True
    return {
        "images": augment.normalize(images) if output.normalize == "host" else images,
        "masks": np.packbits(masks, axis=-1) if output.pack_masks else masks.view(bool),
        "obj_valid": valid,
    }


class _ReplacingTransform(grain.transforms.RandomMap):
    """Shared: the source for replacement draws, and the replacement loop."""

    def __init__(self, source, max_records: int, what: str):
        self.source = source  # a tfds / grain random-access source (picklable)
        self.max_records = max_records
        self.what = what

    def _with_replacements(self, record: dict, rng: np.random.Generator, attempt):
        for _ in range(self.max_records + 1):
            result = attempt(record, rng)
            if result is not None:
                return result
            record = self.source[int(rng.integers(len(self.source)))]
        raise RuntimeError(
            f"{self.max_records + 1} records in a row gave no {self.what}; the dataset has "
            f"(almost) no usable record for this sampling config")


class VideoClip(_ReplacingTransform):
    """SA-V record -> clip example (see the module docstring)."""

    def __init__(self, source, clip: sampling.ClipConfig | None = None,
                 aug: augment.AugmentConfig | None = None, output: OutputConfig | None = None):
        clip = clip or sampling.ClipConfig()
        super().__init__(source, clip.max_records, f"{clip.num_frames}-frame clip")
        self.clip = clip
        self.aug = aug or augment.AugmentConfig()
        self.output = output or OutputConfig()

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        cv2.setNumThreads(1)  # one core per worker: Grain's workers are the parallelism
        return self._with_replacements(record, rng, self._attempt)

    def _attempt(self, record: dict, rng: np.random.Generator) -> dict | None:
        choice = sampling.sample_clip(record, rng, self.clip)
        if choice is None:
            return None
        n_obj = int(record["num_objects"])
        rles = record["masklet_rles"]
        frame_masks = [[rles[p * n_obj + k] for k in choice.objects] for p in choice.positions]
        params = augment.sample_params(rng, self.aug, self.clip.num_frames)
        mask_hw = (int(record["orig_height"]), int(record["orig_width"]))
        out = render([record["frames"][p] for p in choice.positions], frame_masks, mask_hw,
                     params, self.aug, self.clip.max_objects, self.output)
        obj_ids = np.full(self.clip.max_objects, -1, np.int32)
        obj_ids[:len(choice.objects)] = np.asarray(record["obj_ids"])[list(choice.objects)]
        out.update(
            obj_ids=obj_ids,
            frame_idx=np.asarray(record["frame_idx"], np.int32)[list(choice.positions)],
            record_id=np.int32(numeric_id(record["video_id"])),
            orig_hw=np.asarray(mask_hw, np.int32))
        return out


class ImageSample(_ReplacingTransform):
    """SA-1B record -> 1-frame example with up to max_masks objects."""

    def __init__(self, source, image: sampling.ImageConfig | None = None,
                 aug: augment.AugmentConfig | None = None, output: OutputConfig | None = None):
        image = image or sampling.ImageConfig()
        super().__init__(source, image.max_records, "usable mask")
        self.image = image
        self.aug = aug or augment.AugmentConfig.image()
        self.output = output or OutputConfig()

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        cv2.setNumThreads(1)
        return self._with_replacements(record, rng, self._attempt)

    def _attempt(self, record: dict, rng: np.random.Generator) -> dict | None:
        chosen = sampling.sample_masks(record, rng, self.image)
        if not chosen:
            return None
        params = augment.sample_params(rng, self.aug, 1)
        hw = (int(record["height"]), int(record["width"]))
        out = render([record["image"]], [[record["mask_rles"][k] for k in chosen]], hw,
                     params, self.aug, self.image.max_masks, self.output)
        obj_ids = np.full(self.image.max_masks, -1, np.int32)
        obj_ids[:len(chosen)] = np.asarray(record["ann_id"])[list(chosen)] % 2**31
        out.update(
            obj_ids=obj_ids,
            frame_idx=np.zeros(1, np.int32),
            record_id=np.int32(int(record["image_id"]) % 2**31),
            orig_hw=np.asarray([record["orig_height"], record["orig_width"]], np.int32))
        return out
