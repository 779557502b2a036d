"""DAVIS-2017-style folders (your own videos for fine-tuning) as a TFDS dataset.

`manual_dir` is the DAVIS root: `JPEGImages/<resolution>/<vid>/00000.jpg ...` with palette PNGs
in `Annotations/<resolution>/<vid>/00000.png ...` (0 = background, 1..K = objects, 255 =
void: neither background nor an object), or the same without the resolution level
(`JPEGImages/<vid>/`). One example per video, with the SA-V builder's features (`sav.features`,
see there), so the SA-V training transform (`examples.VideoClip`) reads it unchanged:

    frames        the kept frames' JPEGs (the original bytes; re-encoded only when the long side
                  exceeds `max_side`, default 1024 as SA-V)
    frame_idx     each kept frame's number (its file name)
    masklet_rles  COCO RLE per kept frame and object, frame-major, at the annotation size
                  (orig_height x orig_width); all-zero where the object is absent
    obj_ids       palette ids of the objects seen in any kept frame; first_frame: position of
                  the first kept frame showing each

Annotation stride. Every kept frame is an "annotated frame" for the clip sampler, which takes
`num_frames` consecutive ones. SA-V keeps every 4th frame of its 24 fps videos (6 fps); DAVIS
annotates every frame at 24 fps, so `frame_stride=1` (the default: all the data) gives clips 4x
denser in time than SA-V's, and `frame_stride=4` keeps frames 0, 4, 8, ... of each video
(positions in its sorted frame list) for SA-V's 6 fps. Only the kept frames must be annotated.

Corrupt inputs are skipped, counted and listed: a kept frame with no annotation PNG
("missing_annotation"), an unreadable JPEG ("bad_jpeg") or PNG ("bad_png"), a PNG whose size
differs from its JPEG or a frame whose size differs from the video's ("size_mismatch") drops
that frame (the video keeps the others: the report shows the gap); a video without any
annotation, with no usable frame ("no_frames"), no object ("empty_masklets") or a frame file
not named by its number ("bad_name") is skipped whole.

Splits: every video goes to "train", except those named in `heldout_list` (a file, one video
id a line, e.g. DAVIS's `ImageSets/2017/val.txt`), which go to `heldout_split` ("val").
Shards: `videos_per_shard` videos each, in sorted order per split (the unit of parallel and
resumable preparation; its work-file name carries a hash of its videos).

TFDS itself ships a `davis` builder (another format). Wherever TFDS can import its video
datasets, `tfds.data_source("davis", data_dir=...)` resolves to that one, which then tries to
download DAVIS from ETH; so this builder is not registered under the name, and prepared data is
read with its version, `tfds.data_source("davis:1.0.0", split="train", data_dir=...)` (`TFDS_NAME`;
TFDS then reads the files without any builder code), or through `SourceSpec("davis", ...)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import folders, jpeg, rle
from input_pipeline.errors import CorruptRecord
from input_pipeline.tfds_builders import sav
from input_pipeline.tfds_builders.base import ShardBuilder

NAME = "davis"
VERSION = "1.0.0"
TFDS_NAME = f"{NAME}:{VERSION}"  # what tfds.data_source / tfds.builder need (see above)
VOID = 255


@dataclasses.dataclass(frozen=True)
class DavisConfig:
    """resolution: the `JPEGImages/<resolution>` level (ignored for a flat layout);
    frame_stride: keep every n-th frame (1: all, DAVIS's 24 fps; 4: SA-V's 6 fps); max_side /
    jpeg_quality: as SA-V (cap on the stored long side, quality of re-encoded frames);
    heldout_list / heldout_split: videos for a held-out split (see the module docstring; a
    relative heldout_list is read from manual_dir);
    videos_per_shard: videos per prepared shard."""

    resolution: str = "480p"
    frame_stride: int = 1
    max_side: int | None = 1024
    jpeg_quality: int = 95
    heldout_list: str | None = None
    heldout_split: str = "val"
    videos_per_shard: int = 8

    def __post_init__(self):
        if self.frame_stride < 1 or self.videos_per_shard < 1:
            raise ValueError(f"frame_stride and videos_per_shard must be >= 1: {self}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.heldout_split) or \
                self.heldout_split == "train":
            raise ValueError(f"heldout_split must be a lower-case name other than 'train', got "
                             f"{self.heldout_split!r}")


@dataclasses.dataclass(frozen=True)
class VideoShard:
    """A group of videos converted together (into one work file by `input_pipeline.prepare`)."""

    frames_root: str
    ann_root: str
    split: str
    index: int
    videos: tuple[str, ...]

    @property
    def stem(self) -> str:
        digest = hashlib.sha1("\n".join(self.videos).encode()).hexdigest()[:8]
        return f"{NAME}_{self.split}_{self.index:05d}_{digest}"

    def __str__(self) -> str:
        return f"{self.frames_root} [{', '.join(self.videos)}]"


def features() -> tfds.features.FeaturesDict:
    """The SA-V record schema (one schema, one training transform)."""
    return sav.features()


def _read_list(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def find_shards(manual_dir: str | os.PathLike, cfg: DavisConfig = DavisConfig()
                ) -> list[VideoShard]:
    """The videos of the DAVIS root `manual_dir`, grouped into shards (train first). Raises
    FileNotFoundError (no DAVIS layout, no video) or ValueError (a held-out name not found)."""
    manual_dir = os.fspath(manual_dir)
    frames_root, ann_root = folders.davis_dirs(manual_dir, cfg.resolution)
    videos = folders.video_folders(frames_root)
    if not videos:
        raise FileNotFoundError(f"no video folders (shards) in {frames_root}")
    heldout: list[str] = []
    if cfg.heldout_list:
        path = cfg.heldout_list
        path = path if os.path.isabs(path) else os.path.join(manual_dir, path)
        heldout = sorted(set(_read_list(path)))
        unknown = sorted(set(heldout) - set(videos))
        if unknown:
            raise ValueError(f"{path} names videos not in {frames_root}: {unknown[:10]}")
    held = set(heldout)
    per_split = {"train": [v for v in videos if v not in held],
                 cfg.heldout_split: heldout}
    shards = []
    for split, vids in per_split.items():
        n = cfg.videos_per_shard
        for i in range(0, len(vids), n):
            shards.append(VideoShard(frames_root, ann_root, split, i // n, tuple(vids[i:i + n])))
    return shards


def _load_frame(video: folders.FolderVideo, t: int, png: str
                ) -> tuple[bytes, np.ndarray, np.ndarray]:
    """-> (JPEG bytes, decoded RGB, uint8 id map) of frame t; CorruptRecord when unusable."""
    path = video.frames[t]
    record = f"{video.video_id}/{os.path.basename(path)}"
    with open(path, "rb") as f:
        data = f.read()
    image = jpeg.checked_decode(data, path, record)
    ids = folders.load_palette_png(png)
    if ids.shape != image.shape[:2]:
        raise CorruptRecord(png, record, "size_mismatch",
                            f"annotation {ids.shape[0]}x{ids.shape[1]}, frame "
                            f"{image.shape[0]}x{image.shape[1]}")
    return data, image, ids.astype(np.uint8)


def _stored(data: bytes, image: np.ndarray, cfg: DavisConfig) -> tuple[bytes, tuple[int, int]]:
    """The frame as stored: the original JPEG, or shrunk to `max_side` and re-encoded."""
    h, w = image.shape[:2]
    if cfg.max_side is None or max(h, w) <= cfg.max_side:
        return data, (h, w)
    s = cfg.max_side / max(h, w)
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    small = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR))
    return jpeg.encode(small, cfg.jpeg_quality), (sh, sw)


def example_from_video(video: folders.FolderVideo, cfg: DavisConfig
                       ) -> tuple[dict | None, list[CorruptRecord]]:
    """FolderVideo -> (TFDS example or None when the video is skipped, skip records)."""
    vid, pngs = video.video_id, video.masks[0]
    if not pngs:
        return None, [CorruptRecord(vid, vid, "missing_annotation", "no annotation PNG")]
    notes: list[CorruptRecord] = []
    frames, frame_idx, per_frame = [], [], []  # per_frame: {obj id: RLE counts}
    orig_hw = stored_hw = None
    for t in sorted(video.frames)[::cfg.frame_stride]:
        record = f"{vid}/{os.path.basename(video.frames[t])}"
        if t not in pngs:
            notes.append(CorruptRecord(video.frames[t], record, "missing_annotation",
                                       "no annotation PNG for this frame"))
            continue
        try:
            data, image, ids = _load_frame(video, t, pngs[t])
            if orig_hw is not None and ids.shape != orig_hw:
                raise CorruptRecord(video.frames[t], record, "size_mismatch",
                                    f"frame {ids.shape[0]}x{ids.shape[1]}, the video's "
                                    f"first frame {orig_hw[0]}x{orig_hw[1]}")
        except CorruptRecord as e:
            notes.append(e)
            continue
        data, stored_hw = _stored(data, image, cfg)
        orig_hw = ids.shape
        frames.append(data)
        frame_idx.append(t)
        per_frame.append({int(o): rle.encode(ids == o)["counts"] for o in np.unique(ids)
                          if o not in (0, VOID)})
    if not frames:
        return None, notes + [CorruptRecord(vid, vid, "no_frames", "no usable frame")]
    obj_ids = sorted({o for masks in per_frame for o in masks})
    if not obj_ids:
        return None, notes + [CorruptRecord(vid, vid, "empty_masklets",
                                            "no object in any kept frame")]
    empty = rle.encode(np.zeros(orig_hw, bool))["counts"]
    example = {
        "video_id": vid,
        "frames": np.asarray(frames, dtype=object),
        "frame_idx": np.asarray(frame_idx, np.int32),
        "height": stored_hw[0], "width": stored_hw[1],
        "orig_height": orig_hw[0], "orig_width": orig_hw[1],
        "obj_ids": np.asarray(obj_ids, np.int32),
        "first_frame": np.asarray([min(p for p, m in enumerate(per_frame) if o in m)
                                   for o in obj_ids], np.int32),
        "num_objects": len(obj_ids),
        "masklet_rles": [m.get(o, empty) for m in per_frame for o in obj_ids],
    }
    return example, notes


def examples_from_shard(shard: VideoShard, cfg: DavisConfig = DavisConfig()
                        ) -> Iterator[tuple[str, dict] | CorruptRecord]:
    """One shard of videos -> (video id, example) per kept video; CorruptRecord per skip."""
    for vid in shard.videos:
        try:
            video = folders.read_davis_video(shard.frames_root, shard.ann_root, vid)
        except CorruptRecord as e:
            yield e
            continue
        example, notes = example_from_video(video, cfg)
        yield from notes
        if example is not None:
            yield vid, example


class Davis(ShardBuilder, skip_registration=True):
    """DAVIS-style folders in `manual_dir` (single process; for many videos in parallel,
    resumable, use `python scripts/prepare_data.py davis`). Not registered (see the module
    docstring): construct it, or read prepared data with `TFDS_NAME`."""

    name = NAME
    VERSION = tfds.core.Version(VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point manual_dir at a DAVIS-2017-style root (JPEGImages/480p/<video>/*.jpg and "
        "palette Annotations/480p/<video>/*.png), e.g. DAVIS-2017 trainval from "
        "https://davischallenge.org/davis2017/code.html or your own videos.")

    def __init__(self, *, config: DavisConfig = DavisConfig(), **kwargs):
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=features(),
                                     description="DAVIS-style videos with palette masks.")

    def _split_generators(self, dl_manager):
        by_split: dict[str, list[VideoShard]] = {}
        for shard in find_shards(dl_manager.manual_dir, self.prep_config):
            by_split.setdefault(shard.split, []).append(shard)
        return {split: self._generate_examples(shards) for split, shards in by_split.items()}

    def convert(self, shard: VideoShard):
        return examples_from_shard(shard, self.prep_config)
