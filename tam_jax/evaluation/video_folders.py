"""Video datasets on disk for `run`: frames, the objects' first masks, and prediction PNGs.

Layouts (`data_dir` is the dataset root):
    davis  <data_dir>/JPEGImages[/480p]/<video>/<n>.jpg      frames
           <data_dir>/Annotations[/480p]/<video>/<n>.png     palette PNGs, ids 1..K
    sav    <data_dir>/JPEGImages_24fps/<video>/<n>.jpg       every 24 fps frame
           <data_dir>/Annotations_6fps/<video>/<obj>/<n>.png one binary PNG per object
The ground truth decides the videos (its folders) and where predictions are due (its PNGs).
A frame's index in the video is the position of its JPEG in numeric order (what the video
predictor counts); a ground-truth PNG `<n>.png` belongs to the JPEG `<n>.jpg`.

Prompts (`ObjectPrompt`): every object's first non-empty ground-truth mask and its frame.
Predictions (`PredictionWriter`) go out in the ground truth's layout: DAVIS palette PNGs
(overlaps go to the object with the highest logit; the ground truth's palette) or SA-V
per-object PNGs (L, 0 / 255), one for every ground-truth PNG.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from tam_jax.evaluation import io
from tam_jax.video_io import jpeg_frame_paths

VIDEO_FORMATS = ("davis", "sav")
_ROOTS = {
    "davis": (("JPEGImages/480p", "Annotations/480p"), ("JPEGImages", "Annotations")),
    "sav": (("JPEGImages_24fps", "Annotations_6fps"),),
}


def dataset_roots(data_dir, fmt: str) -> tuple[Path, Path]:
    """(frames root, ground-truth root) of a dataset folder in layout `fmt`."""
    if fmt not in _ROOTS:
        raise ValueError(f"video format must be one of {VIDEO_FORMATS}, got {fmt!r}")
    data_dir = Path(data_dir)
    for frames, gt in _ROOTS[fmt]:
        if (data_dir / frames).is_dir() and (data_dir / gt).is_dir():
            return data_dir / frames, data_dir / gt
    wanted = " or ".join(f"{f}/ + {g}/" for f, g in _ROOTS[fmt])
    raise io.EvaluationInputError(f"{data_dir}: not a {fmt} folder (expected {wanted})")


def select_videos(gt_root, videos=None, max_videos: int | None = None) -> list[str]:
    """The videos to evaluate: `videos` (default: every ground-truth folder), first N."""
    names = io.list_videos(gt_root) if videos is None else list(videos)
    if max_videos is not None:
        names = names[: max(0, int(max_videos))]
    if not names:
        raise io.EvaluationInputError(f"{gt_root}: no videos to evaluate")
    return names


@dataclasses.dataclass
class ObjectPrompt:
    """One object: its name in the ground truth (SA-V folder, DAVIS id as text), the frame
    index of its first non-empty mask and that mask (bool (H, W))."""

    name: str
    frame: int
    mask: np.ndarray


@dataclasses.dataclass
class VideoTask:
    """One video to track: frames, prompts and the ground-truth frames predictions are due on.

    gt_frames: {frame index: PNG name} over all objects; object_frames: SA-V only, each
    object's {frame index: PNG name}; empty_objects: SA-V objects with no foreground anywhere
    (not prompted; their predictions are empty); palette: the DAVIS ground truth's palette.
    """

    name: str
    fmt: str
    frame_paths: list[str]
    height: int
    width: int
    objects: list[ObjectPrompt]
    gt_frames: dict[int, str]
    object_frames: dict[str, dict[int, str]] = dataclasses.field(default_factory=dict)
    empty_objects: list[str] = dataclasses.field(default_factory=list)
    palette: list[int] | None = None

    @property
    def frames_dir(self) -> str:
        return str(Path(self.frame_paths[0]).parent)

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)


def _frame_index(frame_paths: list[str]) -> dict[int, int]:
    return {int(Path(p).stem): i for i, p in enumerate(frame_paths)}


def _positions(names: list[str], index: dict[int, int], png_dir: Path, frames_dir) -> list[int]:
    out = []
    for name in names:
        stem = Path(name).stem
        if not stem.isdigit() or int(stem) not in index:
            raise io.EvaluationInputError(
                f"{png_dir / name}: no frame {stem}.jpg in {frames_dir} for this annotation"
            )
        out.append(index[int(stem)])
    return out


def load_task(frames_root, gt_root, video: str, fmt: str) -> VideoTask:
    """Read one video's frame list and ground truth into a `VideoTask`."""
    frames_dir = Path(frames_root) / video
    if not frames_dir.is_dir():
        raise io.EvaluationInputError(f"{frames_dir}: no frames for ground-truth video {video!r}")
    frame_paths = jpeg_frame_paths(frames_dir)
    index = _frame_index(frame_paths)
    if fmt == "davis":
        return _davis_task(Path(gt_root), video, frame_paths, index)
    return _sav_task(Path(gt_root), video, frame_paths, index)


def _davis_task(gt_root: Path, video: str, frame_paths, index) -> VideoTask:
    names = io.davis_frames(gt_root, video)
    png_dir = gt_root / video
    pos = _positions(names, index, png_dir, Path(frame_paths[0]).parent)
    firsts: dict[int, ObjectPrompt] = {}
    shape = None
    for t, name in zip(pos, names):
        ids = io.read_id_mask(png_dir / name)
        shape = shape or ids.shape
        for i in np.unique(ids).tolist():
            if i != 0 and i not in firsts:
                firsts[i] = ObjectPrompt(str(i), t, ids == i)
    with Image.open(png_dir / names[0]) as im:
        palette = im.getpalette() if im.mode == "P" else None
    return VideoTask(
        name=video,
        fmt="davis",
        frame_paths=frame_paths,
        height=shape[0],
        width=shape[1],
        objects=[firsts[i] for i in sorted(firsts)],
        gt_frames=dict(zip(pos, names)),
        palette=palette,
    )


def _sav_task(gt_root: Path, video: str, frame_paths, index) -> VideoTask:
    objects, empty, object_frames, gt_frames = [], [], {}, {}
    shape = None
    for obj, names in io.sav_object_frames(gt_root, video).items():
        png_dir = gt_root / video / obj
        pos = _positions(names, index, png_dir, Path(frame_paths[0]).parent)
        object_frames[obj] = dict(zip(pos, names))
        gt_frames.update(object_frames[obj])
        prompt = None
        for t, name in zip(pos, names):
            mask = io.read_binary_mask(png_dir / name)
            shape = shape or mask.shape
            if mask.any():
                prompt = ObjectPrompt(obj, t, mask)
                break
        if prompt is None:
            empty.append(obj)
        else:
            objects.append(prompt)
    if shape is None:
        raise io.EvaluationInputError(f"{gt_root / video}: no annotation PNGs")
    return VideoTask(
        name=video,
        fmt="sav",
        frame_paths=frame_paths,
        height=shape[0],
        width=shape[1],
        objects=objects,
        gt_frames=dict(sorted(gt_frames.items())),
        object_frames=object_frames,
        empty_objects=empty,
    )


class PredictionWriter:
    """Write one video's predictions under `<pred_root>/<video>/` in the ground truth's layout.

    `write(t, logits)` takes the objects' logits (N, H, W) (in `task.objects` order) on frame
    index t and writes the PNGs due on that frame (nothing if none is); `close()` writes empty
    masks for every due PNG not written (frames before the first prompt, objects that were
    never prompted).
    """

    def __init__(self, task: VideoTask, pred_root):
        self.task = task
        self.dir = Path(pred_root) / task.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done: set[int] = set()
        self._ids = np.array([int(o.name) for o in task.objects] if task.fmt == "davis" else [])

    def write(self, t: int, logits: np.ndarray) -> None:
        if t not in self.task.gt_frames or t in self.done:
            return
        logits = np.asarray(logits)
        expect = (len(self.task.objects), self.task.height, self.task.width)
        if logits.shape != expect:
            raise ValueError(f"{self.task.name} frame {t}: logits {logits.shape}, want {expect}")
        self.done.add(t)
        if self.task.fmt == "davis":
            self._davis(t, logits)
        else:
            for obj, x in zip(self.task.objects, logits):
                self._sav(obj.name, t, x > 0)

    def _davis(self, t: int, logits: np.ndarray) -> None:
        ids = np.zeros((self.task.height, self.task.width), np.uint8)
        if len(logits):
            best = np.argmax(logits, axis=0)
            fg = np.take_along_axis(logits, best[None], 0)[0] > 0
            ids[fg] = self._ids[best[fg]]
        im = Image.fromarray(ids, mode="P" if self.task.palette else "L")
        if self.task.palette:
            im.putpalette(self.task.palette)
        im.save(self.dir / self.task.gt_frames[t])

    def _sav(self, obj: str, t: int, mask: np.ndarray) -> None:
        name = self.task.object_frames[obj].get(t)
        if name is None:
            return
        folder = self.dir / obj
        folder.mkdir(exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / name)

    def close(self) -> None:
        task = self.task
        empty = np.full((len(task.objects), task.height, task.width), -1.0, np.float32)
        for t in task.gt_frames:
            self.write(t, empty)
        blank = np.zeros((task.height, task.width), bool)
        for obj in task.empty_objects:
            for t in task.object_frames[obj]:
                self._sav(obj, t, blank)
