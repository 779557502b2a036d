"""Run a tracker over a DAVIS-style or SA-V val/test folder, write its masks, score them.

    evaluate_videos(predictor, data_dir, fmt, out_dir)      a `VideoPredictor`
    copy_first_mask_baseline(data_dir, fmt, out_dir)        each object's first mask, copied
    run_videos(track_fn, data_dir, fmt, out_dir)            any tracker (both of the above)

Protocol (semi-supervised VOS, as SAM 2's `vos_inference`): every object is prompted with its
first non-empty ground-truth mask (`add_new_mask` on that frame), all objects are propagated
together through the whole video, and an object's masks before its prompt frame are empty.
Predictions are written in the ground truth's layout (`video_folders.PredictionWriter`) under
`<out_dir>/predictions/`, scored with `score_folders` (first and last annotated frames not
scored), and reported with `report.write_report` (`per_object.csv`, `per_video.csv`,
`summary.json` in `out_dir`). `overlays=True` adds `<out_dir>/overlays/<video>/<n>.png` for
every frame and `<out_dir>/overlays/<video>.gif` (or `.mp4`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tam_jax.evaluation import video_folders
from tam_jax.evaluation.overlay import VideoOverlayWriter
from tam_jax.evaluation.report import summary_dict, write_report
from tam_jax.evaluation.score import ScoreReport, score_folders
from tam_jax.evaluation.video_folders import PredictionWriter, VideoTask

PREDICTIONS = "predictions"
OVERLAYS = "overlays"

# track_fn(task) -> iterator of (frame index, logits (N_obj, H, W)) in `task.objects` order
TrackFn = Callable[[VideoTask], Iterator[tuple[int, np.ndarray]]]


@dataclasses.dataclass
class VideoEvalResult:
    """What `run_videos` produced: the scores, the summary written, and the file paths."""

    report: ScoreReport
    summary: dict
    paths: dict[str, Path]


def predictor_track_fn(predictor) -> TrackFn:
    """A `TrackFn` over a `VideoPredictor`: first masks in, `propagate_in_video` out."""

    def track(task: VideoTask) -> Iterator[tuple[int, np.ndarray]]:
        if not task.objects:
            return
        state = predictor.init_state(task.frames_dir)
        for obj in task.objects:
            predictor.add_new_mask(state, obj.frame, obj.name, obj.mask)
        first = np.array([o.frame for o in task.objects])
        for t, obj_ids, logits in predictor.propagate_in_video(state):
            if list(obj_ids) != [o.name for o in task.objects]:
                raise RuntimeError(f"{task.name}: predictor objects {obj_ids} are not the task's")
            x = np.array(logits[:, 0], np.float32)  # (N, H, W)
            x[first > t] = -np.inf  # not prompted yet: absent
            yield t, x
        predictor.reset_state(state)

    return track


def copy_first_mask_track_fn(task: VideoTask) -> Iterator[tuple[int, np.ndarray]]:
    """The "copy the first-frame mask" baseline as a `TrackFn`: each object's prompt mask on
    every frame from its prompt frame on (logit +1 inside, -1 outside), absent before."""
    if not task.objects:
        return
    logits = np.where(np.stack([o.mask for o in task.objects]), 1.0, -1.0).astype(np.float32)
    first = np.array([o.frame for o in task.objects])
    for t in range(task.num_frames):
        yield t, np.where((first <= t)[:, None, None], logits, -1.0).astype(np.float32)


def run_videos(
    track_fn: TrackFn,
    data_dir,
    fmt: str,
    out_dir,
    *,
    overlays: bool = False,
    animation: str | None = "gif",
    videos: Sequence[str] | None = None,
    max_videos: int | None = None,
    progress: bool = True,
    context: dict | None = None,
) -> VideoEvalResult:
    """Track every selected video with `track_fn`, write and score the predictions.

    fmt: "davis" or "sav". videos: names to run (default: every ground-truth video), cut to
    the first `max_videos`. context: extra entries for summary.json (e.g. the checkpoint).
    The summary also holds the tracking throughput (`frames`, `track_seconds`,
    `frames_per_s`: frames yielded by track_fn per second; writing, scoring and pictures
    excluded, frame decoding and the first video's compilation included).
    """
    from tqdm import tqdm

    frames_root, gt_root = video_folders.dataset_roots(data_dir, fmt)
    names = video_folders.select_videos(gt_root, videos, max_videos)
    out = Path(out_dir)
    pred_root = out / PREDICTIONS
    frames, seconds = 0, 0.0
    for name in tqdm(names, desc=f"track ({fmt})", unit="video", disable=not progress):
        task = video_folders.load_task(frames_root, gt_root, name, fmt)
        writer = PredictionWriter(task, pred_root)
        pictures = VideoOverlayWriter(out / OVERLAYS, name, animation) if overlays else None
        it = iter(track_fn(task))
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            seconds += time.perf_counter() - t0
            if item is None:
                break
            t, logits = item
            frames += 1
            writer.write(t, logits)
            if pictures is not None:
                _draw(pictures, task, t, logits)
        writer.close()
        if pictures is not None:
            pictures.close()
    report = score_folders(pred_root, gt_root, fmt, videos=names, progress=False)
    ctx = {
        "data_dir": str(data_dir),
        "predictions": str(pred_root),
        "frames": frames,
        "track_seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 3) if seconds > 0 else None,
        **(context or {}),
    }
    paths = write_report(report, out, **ctx)
    return VideoEvalResult(report, summary_dict(report, **ctx), paths)


def _draw(pictures: VideoOverlayWriter, task: VideoTask, t: int, logits: np.ndarray) -> None:
    with Image.open(task.frame_paths[t]) as im:
        rgb = np.asarray(im.convert("RGB"))
    masks = np.asarray(logits) > 0
    if rgb.shape[:2] != masks.shape[1:]:
        raise ValueError(
            f"{task.frame_paths[t]}: frame size {rgb.shape[:2]} differs from the "
            f"annotation size {masks.shape[1:]}"
        )
    pictures.add(Path(task.frame_paths[t]).stem, rgb, masks)


def evaluate_videos(
    predictor, data_dir, fmt: str, out_dir, overlays: bool = False, **kwargs
) -> dict:
    """Track a folder with a `VideoPredictor` (first masks as prompts), write, score; returns
    the summary dict (also written as summary.json). kwargs: as `run_videos`."""
    kwargs.setdefault("context", {"tracker": "model", "variant": predictor.cfg.name})
    progress, predictor.progress = predictor.progress, False  # one bar: over videos
    try:
        result = run_videos(
            predictor_track_fn(predictor), data_dir, fmt, out_dir, overlays=overlays, **kwargs
        )
    finally:
        predictor.progress = progress
    return result.summary


def copy_first_mask_baseline(data_dir, fmt: str, out_dir, overlays: bool = False, **kwargs) -> dict:
    """The "copy the first-frame mask to every frame" baseline, written and scored as
    `evaluate_videos`; returns the summary dict."""
    kwargs.setdefault("context", {"tracker": "copy_first_mask"})
    return run_videos(
        copy_first_mask_track_fn, data_dir, fmt, out_dir, overlays=overlays, **kwargs
    ).summary
