"""Read ground truth and predictions in the SA-V and DAVIS folder layouts (§2.4, §4.1).

SA-V layout   <root>/<video>/<obj>/<frame>.png   one object per PNG, foreground = value > 0
              (L 0/255 and P 0/1 both work; objects may overlap).
DAVIS layout  <root>/<video>/<frame>.png         one PNG per frame; pixel value = object id
              (palette index for P images), 0 = background.

The ground truth decides what is scored: its videos, objects and annotated frames. A prediction
PNG must exist for every ground-truth frame (`MissingPredictionError` names it); a predicted
object that is missing altogether (no <obj> folder in SA-V, an id never drawn in DAVIS) scores
as empty masks, as the DAVIS toolkit does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = ("sav", "davis")


class EvaluationInputError(ValueError):
    """A ground-truth or prediction folder does not have the expected layout."""


class MissingPredictionError(FileNotFoundError):
    """A prediction file or video folder that the ground truth requires does not exist."""


def list_videos(root) -> list[str]:
    """Sorted names of the sub-folders of `root` (hidden ones skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationInputError(f"{root}: not a folder")
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def list_pngs(folder) -> list[str]:
    """Sorted .png file names in `folder` (the annotated frames)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.endswith(".png"))


def detect_format(gt_root) -> str:
    """'davis' if the first video folder of `gt_root` holds PNG files, 'sav' if it holds object
    folders; EvaluationInputError when there are no videos or the folder mixes both."""
    videos = list_videos(gt_root)
    if not videos:
        raise EvaluationInputError(f"{gt_root}: no video folders")
    return _video_format(Path(gt_root) / videos[0])


def _video_format(video_dir: Path) -> str:
    dirs = [e.name for e in os.scandir(video_dir) if e.is_dir() and not e.name.startswith(".")]
    pngs = list_pngs(video_dir)
    if dirs and pngs:
        raise EvaluationInputError(
            f"{video_dir}: holds both object folders (SA-V layout) and PNG files (DAVIS layout)"
        )
    if pngs:
        return "davis"
    if dirs:
        return "sav"
    raise EvaluationInputError(f"{video_dir}: no PNG files and no object folders")


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            arr = np.array(img)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise EvaluationInputError(f"{path}: cannot read PNG ({err})") from err
    if arr.ndim != 2:
        raise EvaluationInputError(
            f"{path}: expected a single-channel (L / P / 1) PNG, got shape {arr.shape}"
        )
    return arr


def read_binary_mask(path) -> np.ndarray:
    """SA-V mask PNG -> bool (H, W), foreground = value > 0."""
    return _read_png(Path(path)) > 0


def read_id_mask(path) -> np.ndarray:
    """DAVIS PNG -> int64 (H, W) object ids (palette indices for P images), 0 = background."""
    return _read_png(Path(path)).astype(np.int64)


def sav_object_frames(gt_root, video: str) -> dict[str, list[str]]:
    """SA-V ground truth of one video: {object folder name: its sorted PNG frame names}."""
    video_dir = Path(gt_root) / video
    if _video_format(video_dir) != "sav":
        raise EvaluationInputError(
            f"{video_dir}: PNG files where SA-V object folders were expected"
        )
    return {obj: list_pngs(video_dir / obj) for obj in list_videos(video_dir)}


def davis_frames(gt_root, video: str) -> list[str]:
    """DAVIS ground truth of one video: its sorted PNG frame names."""
    video_dir = Path(gt_root) / video
    if _video_format(video_dir) != "davis":
        raise EvaluationInputError(f"{video_dir}: object folders where DAVIS PNGs were expected")
    return list_pngs(video_dir)


def require_prediction_video(pred_root, video: str) -> None:
    """MissingPredictionError unless <pred_root>/<video>/ exists."""
    path = Path(pred_root) / video
    if not path.is_dir():
        raise MissingPredictionError(f"no predictions for video {video!r}: {path} does not exist")


def _pred_path(pred_dir: Path, frame: str, gt_dir: Path) -> Path:
    path = pred_dir / frame
    if not path.is_file():
        raise MissingPredictionError(
            f"missing prediction {path} (the ground truth has {gt_dir / frame})"
        )
    return path


def _check_shapes(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> None:
    if pred.shape != gt.shape:
        raise EvaluationInputError(
            f"size mismatch: {pred_path} is {pred.shape[1]}x{pred.shape[0]}, "
            f"{gt_path} is {gt.shape[1]}x{gt.shape[0]} (W x H)"
        )


def has_sav_prediction(pred_root, video: str, obj: str) -> bool:
    """Whether the prediction has a folder for this object (else it scores as empty masks)."""
    return (Path(pred_root) / video / obj).is_dir()


def iter_sav_object(
    gt_root, pred_root, video: str, obj: str, frames: list[str]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (frame name, pred (H, W) bool, gt (H, W) bool) for the given frames of one object.

    A missing object folder in the prediction yields empty predictions; a missing PNG inside an
    existing one raises MissingPredictionError.
    """
    gt_dir = Path(gt_root) / video / obj
    pred_dir = Path(pred_root) / video / obj
    present = pred_dir.is_dir()
    for frame in frames:
        gt = read_binary_mask(gt_dir / frame)
        if present:
            path = _pred_path(pred_dir, frame, gt_dir)
            pred = read_binary_mask(path)
            _check_shapes(pred, gt, path, gt_dir / frame)
        else:
            pred = np.zeros_like(gt)
        yield frame, pred, gt


def iter_davis_video(
    gt_root, pred_root, video: str, frames: list[str]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (frame name, pred ids (H, W) int64, gt ids (H, W) int64) for the given frames."""
    gt_dir = Path(gt_root) / video
    pred_dir = Path(pred_root) / video
    for frame in frames:
        gt = read_id_mask(gt_dir / frame)
        path = _pred_path(pred_dir, frame, gt_dir)
        pred = read_id_mask(path)
        _check_shapes(pred, gt, path, gt_dir / frame)
        yield frame, pred, gt
