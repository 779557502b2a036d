"""Folder datasets: SA-V val / test (data_and_eval.md §2.4) and DAVIS-2017 style folders.

SA-V val / test:
    <root>/JPEGImages_24fps/<vid>/00000.jpg ...                 every 24 fps frame
    <root>/Annotations_6fps/<vid>/<obj:03d>/00000.png 00004.png  one binary PNG per object
    (PNG mode `L` 0/255 or `P` 0/1: both accepted; > 2 distinct values is an error)
DAVIS-2017 (also the layout for fine-tuning on your own videos):
    <root>/JPEGImages/480p/<vid>/00000.jpg ...
    <root>/Annotations/480p/<vid>/00000.png ...                 palette PNG, 0 = background,
                                                                1..K = object ids, 255 = void
    or flat, without the resolution level: <root>/JPEGImages/<vid>/, <root>/Annotations/<vid>/
Both read into `FolderVideo`: frame paths by frame index and per-object masks by frame index.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from input_pipeline.errors import CorruptRecord

JPEG_EXTS = (".jpg", ".jpeg")


@dataclasses.dataclass
class FolderVideo:
    """frames: {frame index: JPEG path}; masks: {obj id: {frame index: PNG path}} (SA-V, one
    PNG per object) or, for DAVIS, {0: {frame index: palette PNG path}} with `palette=True`."""

    video_id: str
    frames: dict[int, str]
    masks: dict[int, dict[int, str]]
    palette: bool = False

    def object_masks(self, frame_idx: int) -> dict[int, np.ndarray]:
        """{obj id: bool (H, W)} of the objects annotated on `frame_idx`."""
        if self.palette:
            path = self.masks[0].get(frame_idx)
            if path is None:
                return {}
            ids = load_palette_png(path)
            return {int(o): ids == o for o in np.unique(ids) if o != 0}
        return {o: load_binary_png(per[frame_idx]) for o, per in self.masks.items()
                if frame_idx in per}

    @property
    def annotated_frames(self) -> list[int]:
        return sorted({t for per in self.masks.values() for t in per})


def _stem_index(name: str, path: str) -> int:
    stem = os.path.splitext(name)[0]
    if not stem.isdigit():
        raise CorruptRecord(path, name, "bad_name", "frame files must be named by number")
    return int(stem)


def _numbered(folder: str, ext: str | tuple[str, ...]) -> dict[int, str]:
    return {_stem_index(f, folder): os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(ext)}


def load_binary_png(path: str) -> np.ndarray:
    """One-object PNG (`L` 0/255, `P` 0/1, `1`) -> bool (H, W). More than two values: error."""
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (OSError, ValueError) as e:
        raise CorruptRecord(path, os.path.basename(path), "bad_png", str(e)) from None
    if a.ndim == 3:
        a = a[..., 0]
    values = np.unique(a)
    if len(values) > 2:
        raise CorruptRecord(path, os.path.basename(path), "bad_png",
                            f"a one-object mask has {len(values)} distinct values {values[:5]}")
    return a > 0


def load_palette_png(path: str) -> np.ndarray:
    """DAVIS palette PNG -> int (H, W) object ids (0 = background; 255 = void, kept)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"expected a palette (P) or L PNG, got mode {im.mode}")
            return np.asarray(im).astype(np.int32)
    except (OSError, ValueError) as e:
        raise CorruptRecord(path, os.path.basename(path), "bad_png", str(e)) from None


def read_sav_eval(root: str | os.PathLike, split: str | None = None) -> Iterator[FolderVideo]:
    """SA-V val / test. Videos from `<root>/<split>.txt` when given and present, else every
    folder of JPEGImages_24fps (sorted)."""
    root = os.fspath(root)
    frames_root = os.path.join(root, "JPEGImages_24fps")
    ann_root = os.path.join(root, "Annotations_6fps")
    for d in (frames_root, ann_root):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d} does not exist: not an SA-V val/test folder")
    ids = _video_ids(root, split, frames_root)
    for vid in ids:
        obj_root = os.path.join(ann_root, vid)
        masks = {}
        for obj in sorted(os.listdir(obj_root)) if os.path.isdir(obj_root) else []:
            if obj.isdigit():
                masks[int(obj)] = _numbered(os.path.join(obj_root, obj), ".png")
        yield FolderVideo(vid, _numbered(os.path.join(frames_root, vid), ".jpg"), masks)


def davis_dirs(root: str | os.PathLike, resolution: str = "480p") -> tuple[str, str]:
    """(frames root, annotations root) of a DAVIS-style folder: `JPEGImages/<resolution>/<vid>`
    when that folder exists, else the flat `JPEGImages/<vid>` (video folders holding JPEGs).
    Raises FileNotFoundError naming what was looked for."""
    root = os.fspath(root)
    frames, anns = os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations")
    nested = os.path.join(frames, resolution), os.path.join(anns, resolution)
    if os.path.isdir(nested[0]):
        if not os.path.isdir(nested[1]):
            raise FileNotFoundError(f"{nested[1]} does not exist: not a DAVIS-style folder")
        return nested
    flat = os.path.isdir(frames) and any(
        f.lower().endswith(JPEG_EXTS)
        for d in os.scandir(frames) if d.is_dir() for f in os.listdir(d.path))
    if not (flat and os.path.isdir(anns)):
        raise FileNotFoundError(
            f"not a DAVIS-style folder: expected {nested[0]} + {nested[1]}, or video folders of "
            f"JPEGs directly in {frames} + {anns}")
    return frames, anns


def video_folders(frames_root: str) -> list[str]:
    """The video folders (names) under a frames root, sorted."""
    return sorted(d for d in os.listdir(frames_root)
                  if os.path.isdir(os.path.join(frames_root, d)))


def read_davis_video(frames_root: str, ann_root: str, vid: str) -> FolderVideo:
    """One DAVIS-style video (palette PNGs; no annotation folder = no annotated frame).
    Raises CorruptRecord("bad_name") for a frame file not named by its number."""
    anns = os.path.join(ann_root, vid)
    masks = {0: _numbered(anns, ".png")} if os.path.isdir(anns) else {0: {}}
    return FolderVideo(vid, _numbered(os.path.join(frames_root, vid), JPEG_EXTS), masks,
                       palette=True)


def read_davis(root: str | os.PathLike, resolution: str = "480p",
               split: str | None = None) -> Iterator[FolderVideo]:
    """DAVIS-2017 style (nested or flat, see `davis_dirs`). Videos from
    `<root>/ImageSets/2017/<split>.txt` when given, else all."""
    root = os.fspath(root)
    frames_root, ann_root = davis_dirs(root, resolution)
    list_file = os.path.join(root, "ImageSets", "2017", f"{split}.txt") if split else None
    ids = _video_ids(root, None, frames_root, list_file)
    for vid in ids:
        yield read_davis_video(frames_root, ann_root, vid)


def _video_ids(root, split, frames_root, list_file=None) -> list[str]:
    list_file = list_file or (os.path.join(root, f"{split}.txt") if split else None)
    if list_file and os.path.exists(list_file):
        with open(list_file) as f:
            return [line.strip() for line in f if line.strip()]
    return video_folders(frames_root)
