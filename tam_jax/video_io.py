"""Video frames for the video predictor: a JPEG folder, an mp4 file or an array (spec §6.1).

Every frame is resized to the model's square input with Pillow's `resize` default filter
(bicubic), as the official loader does, and kept as uint8 (T, S, S, 3): normalisation happens
on the device, inside the compiled image encoder, so a long video costs 3 bytes per pixel on the
host instead of 12. The original height and width are returned for the output masks.

- JPEG folder: files named `<int>.jpg|jpeg` (any case), in numeric order, as the official.
- mp4: decoded with PyAV (`pip install tam_jax[video]`); the official uses decord, whose scaler
  differs, so mp4 frames are not bit-identical to the official mp4 path (JPEG frames are).
- array: (T, H, W, 3) uint8 RGB, or a list of (H, W, 3) uint8 frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

JPEG_EXTENSIONS = (".jpg", ".jpeg")


class VideoInputError(ValueError):
    """A video that cannot be read or does not have the expected layout."""


def resize_frame(frame_hwc_uint8: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8 with Pillow's default (bicubic) filter."""
    return np.asarray(Image.fromarray(frame_hwc_uint8).resize((image_size, image_size)))


def _check_frame(frame, where: str) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise VideoInputError(f"{where}: expected an (H, W, 3) RGB frame, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise VideoInputError(f"{where}: expected uint8 pixels (0..255), got {arr.dtype}")
    if min(arr.shape[:2]) < 1:
        raise VideoInputError(f"{where}: empty frame of shape {arr.shape}")
    return arr


def jpeg_frame_paths(folder: str | os.PathLike) -> list[str]:
    """The `<int>.jpg` files of `folder` in frame order."""
    names = [n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in JPEG_EXTENSIONS]
    try:
        names.sort(key=lambda n: int(os.path.splitext(n)[0]))
    except ValueError as e:
        raise VideoInputError(
            f"{folder}: JPEG frames must be named <frame index>.jpg ({e})") from None
    if not names:
        raise VideoInputError(f"{folder}: no JPEG frames (<frame index>.jpg) found")
    return [os.path.join(folder, n) for n in names]


def _load_jpeg_folder(folder, image_size):
    frames, hw = [], None
    for path in jpeg_frame_paths(folder):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except OSError as e:
            raise VideoInputError(f"{path}: cannot decode JPEG frame ({e})") from e
        size = (rgb.height, rgb.width)
        if hw is not None and size != hw:
            raise VideoInputError(f"{path}: frame size {size} differs from the first frame's {hw}")
        hw = size
        frames.append(np.asarray(rgb.resize((image_size, image_size))))
    return np.stack(frames), hw


def _load_mp4(path, image_size):
    try:
        import av
    except ImportError as e:
        raise VideoInputError(
            f"{path}: reading mp4 needs PyAV: pip install 'tam_jax[video]'") from e
    frames, hw = [], None
    try:
        with av.open(str(path)) as container:
            for i, vf in enumerate(container.decode(video=0)):
                rgb = vf.to_ndarray(format="rgb24")
                hw = hw or rgb.shape[:2]
                frames.append(resize_frame(_check_frame(rgb, f"{path} frame {i}"), image_size))
    except av.error.FFmpegError as e:
        raise VideoInputError(f"{path}: cannot decode video ({e})") from e
    if not frames:
        raise VideoInputError(f"{path}: the video holds no frames")
    return np.stack(frames), hw


def load_video_frames(video, image_size: int) -> tuple[np.ndarray, int, int]:
    """Frames (T, S, S, 3) uint8 at the model size, and the original (height, width)."""
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if os.path.isdir(path):
            frames, (h, w) = _load_jpeg_folder(path, image_size)
        elif os.path.splitext(path)[1].lower() == ".mp4":
            if not os.path.isfile(path):
                raise VideoInputError(f"{path}: no such video file")
            frames, (h, w) = _load_mp4(path, image_size)
        else:
            raise VideoInputError(f"{path}: expected a folder of JPEG frames or an .mp4 file")
        return frames, h, w
    if isinstance(video, np.ndarray) or hasattr(video, "__array__"):
        video = np.asarray(video)
        if video.ndim != 4:
            raise VideoInputError(f"a video array must be (T, H, W, 3), got shape {video.shape}")
        seq = list(video)
    elif isinstance(video, Sequence):
        seq = list(video)
    else:
        raise VideoInputError(f"cannot read a video from a {type(video).__name__}")
    if not seq:
        raise VideoInputError("the video holds no frames")
    first = _check_frame(seq[0], "frame 0")
    h, w = first.shape[:2]
    frames = []
    for i, f in enumerate(seq):
        arr = _check_frame(f, f"frame {i}")
        if arr.shape[:2] != (h, w):
            raise VideoInputError(
                f"frame {i}: size {arr.shape[:2]} differs from frame 0's {(h, w)}")
        frames.append(resize_frame(arr, image_size))
    return np.stack(frames), h, w
