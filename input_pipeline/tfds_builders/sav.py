"""SA-V (train) as a TFDS dataset: one example per video, its 6 fps frames as JPEG bytes.

The mp4 is decoded once here (PyAV) and the annotated frames 0, 4, 8, ... kept, as SAM 2's
frame extraction does; frames whose long side exceeds `max_side` (default 1024) are shrunk.
Masks stay the original, validated COCO RLEs (at the video's size): the training pipeline
resizes frames and masks together to its square resolution.

Features:
    video_id       str          frames (T,) JPEG bytes      frame_idx (T,) int32 (24 fps index)
    height, width  int32 (stored frames)                    orig_height, orig_width (= masks)
    obj_ids        (N,) int32   first_frame (N,) int32      num_objects int32
    masklet_rles   (T * N,) str COCO RLE counts, frame-major: [t * N + k]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import jpeg, sav
from input_pipeline.errors import CorruptRecord
from input_pipeline.tfds_builders.base import ShardBuilder

NAME = "sav"
VERSION = "1.0.0"
SHARD_GLOB = "sav_*.tar"
FOLDER_GLOB = "sav_*"  # an extracted tar (`sav_0XX/`) is a shard too


@dataclasses.dataclass(frozen=True)
class SavConfig:
    """max_side: cap on the stored frames' long side (None = original size); jpeg_quality of
    the extracted frames (SAM 2's extraction uses OpenCV's default, 95); masklets: "manual"
    (SAM 2's training data) or "manual+auto" (auto masklets appended as extra objects)."""

    max_side: int | None = 1024
    jpeg_quality: int = 95
    masklets: str = "manual"

    def __post_init__(self):
        if self.masklets not in ("manual", "manual+auto"):
            raise ValueError(f"masklets must be 'manual' or 'manual+auto', got {self.masklets!r}")


def features() -> tfds.features.FeaturesDict:
    f = tfds.features
    return f.FeaturesDict({
        "video_id": f.Text(),
        "frames": f.Tensor(shape=(None,), dtype=np.object_),
        "frame_idx": f.Tensor(shape=(None,), dtype=np.int32),
        "height": f.Scalar(dtype=np.int32),
        "width": f.Scalar(dtype=np.int32),
        "orig_height": f.Scalar(dtype=np.int32),
        "orig_width": f.Scalar(dtype=np.int32),
        "obj_ids": f.Tensor(shape=(None,), dtype=np.int32),
        "first_frame": f.Tensor(shape=(None,), dtype=np.int32),
        "num_objects": f.Scalar(dtype=np.int32),
        "masklet_rles": f.Sequence(f.Text()),
    })


def example_from_video(video: sav.SavVideo, cfg: SavConfig) -> tuple[dict, list[CorruptRecord]]:
    """SavVideo -> (TFDS example, notes). Raises CorruptRecord ("bad_mp4", "size_mismatch")."""
    ann = video.manual
    decoded = sav.extract_frames(video.mp4, video.source, f"{video.video_id}.mp4")
    notes = []
    h, w = decoded[0][1].shape[:2]
    if (h, w) != (ann.height, ann.width):
        raise CorruptRecord(video.source, f"{video.video_id}.mp4", "size_mismatch",
                            f"the mp4 is {h}x{w}, the annotation {ann.height}x{ann.width}")
    n_t = min(len(decoded), ann.num_annotated)
    if len(decoded) != ann.num_annotated:
        # SAM 2 uses the frames that exist; recorded so a systematic offset is visible
        notes.append(CorruptRecord(video.source, video.video_id, "frame_count_mismatch",
                                   f"{len(decoded)} annotated frames decode, the JSON has "
                                   f"{ann.num_annotated}; the first {n_t} are kept"))
    rles = [row[:] for row in ann.rles[:n_t]]
    obj_ids, first = list(ann.obj_ids), list(ann.first_frame)
    if cfg.masklets == "manual+auto" and video.auto is not None:
        offset = max(obj_ids) + 1
        for t in range(n_t):
            rles[t] = rles[t] + video.auto.rles[t]
        obj_ids += [offset + o for o in video.auto.obj_ids]
        first += video.auto.first_frame
    keep = [k for k in range(len(obj_ids)) if first[k] < n_t]
    if not keep:
        raise CorruptRecord(video.source, video.video_id, "empty_masklets",
                            "no object is visible in the frames that decode")
    scale = 1.0 if cfg.max_side is None else min(1.0, cfg.max_side / max(h, w))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    frames = []
    for _, frame in decoded[:n_t]:
        if (sh, sw) != (h, w):
            frame = np.asarray(Image.fromarray(frame).resize((sw, sh), Image.BILINEAR))
        frames.append(jpeg.encode(frame, cfg.jpeg_quality))
    example = {
        "video_id": video.video_id,
        "frames": np.asarray(frames, dtype=object),
        "frame_idx": np.asarray([t for t, _ in decoded[:n_t]], np.int32),
        "height": sh, "width": sw, "orig_height": h, "orig_width": w,
        "obj_ids": np.asarray([obj_ids[k] for k in keep], np.int32),
        "first_frame": np.asarray([first[k] for k in keep], np.int32),
        "num_objects": len(keep),
        "masklet_rles": [str(rles[t][k]["counts"]) for t in range(n_t) for k in keep],
    }
    return example, notes


def examples_from_tar(path: str, cfg: SavConfig = SavConfig()
                      ) -> Iterator[tuple[str, dict] | CorruptRecord]:
    """One SA-V train tar (or an extracted folder) -> (key, example) per good video;
    CorruptRecord for skipped videos, dropped objects and notes."""
    reader = sav.read_folder(path) if os.path.isdir(path) else sav.read_tar(path)
    for item in reader:
        if isinstance(item, CorruptRecord):
            yield item
            continue
        yield from item.manual.skipped
        try:
            example, notes = example_from_video(item, cfg)
        except CorruptRecord as e:
            yield e
            continue
        yield from notes
        yield item.video_id, example


class Sav(ShardBuilder):
    """SA-V train from its original tars in `manual_dir` (single process; for many shards in
    parallel, resumable, use `python scripts/prepare_data.py sav`)."""

    name = NAME
    VERSION = tfds.core.Version(VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the SA-V training tars (sav_000.tar ... sav_055.tar) from "
        "https://ai.meta.com/datasets/segment-anything-video-downloads/ into manual_dir.")

    SHARD_GLOB = SHARD_GLOB
    FOLDER_GLOB = FOLDER_GLOB

    def __init__(self, *, config: SavConfig = SavConfig(), **kwargs):
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=features(),
                                     description="SA-V training videos at 6 fps with masklets.")

    def convert(self, path: str):
        return examples_from_tar(path, self.prep_config)
