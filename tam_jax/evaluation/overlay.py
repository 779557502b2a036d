"""Pictures of masks: each object in its own colour over the frame, and animations.

    draw_masks(rgb, masks)           alpha blend + 1-px-or-more contour per object
    save_gif(frames, path, fps)      animated GIF (Pillow), one GIF frame per frame
    save_mp4(frames, path, fps)      H.264 MP4 (PyAV), sizes padded to even
    VideoOverlayWriter               per-frame PNGs of one video + its animation

numpy, OpenCV and Pillow; PyAV only for MP4.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Distinct, saturated colours for the first objects; later ones step around the hue circle.
BASE_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
)
ANIMATIONS = ("gif", "mp4")


def object_colour(k: int) -> tuple[int, int, int]:
    """RGB colour of the k-th object (k >= 0)."""
    if k < len(BASE_COLOURS):
        return BASE_COLOURS[k]
    hue = (k * 0.618033988749895) % 1.0  # golden-ratio steps never repeat a hue
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_masks(
    rgb: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    colours: Sequence[tuple[int, int, int]] | None = None,
    alpha: float = 0.5,
    contour: int | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 frame with each (H, W) mask blended in its colour and outlined.

    Later masks are drawn over earlier ones. contour: outline thickness in pixels (default
    about 1/300 of the shorter side, at least 1; 0 for none).
    """
    out = np.array(rgb, np.float32, copy=True)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) frame, got shape {out.shape}")
    if contour is None:
        contour = max(1, round(min(out.shape[:2]) / 300))
    edges = []
    for k, mask in enumerate(masks):
        m = np.asarray(mask, bool)
        if m.shape != out.shape[:2]:
            raise ValueError(f"mask {k} has shape {m.shape}, the frame is {out.shape[:2]}")
        colour = np.array(colours[k] if colours is not None else object_colour(k), np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * colour
        edges.append((m, colour))
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if contour > 0:
        for m, colour in edges:
            if m.any():
                found, _ = cv2.findContours(
                    m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
                )
                cv2.drawContours(out, found, -1, tuple(int(c) for c in colour), contour)
    return out


def label(rgb: np.ndarray, text: str) -> np.ndarray:
    """The frame with `text` in white on a dark box in the top-left corner."""
    out = np.ascontiguousarray(rgb).copy()
    scale = max(0.3, min(out.shape[:2]) / 600)
    thick = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (0, 0), (w + 4, h + base + 4), (0, 0, 0), -1)
    cv2.putText(out, text, (2, h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick)
    return out


def shrink(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """The frame scaled down (area filter) so its longer side is at most max_side."""
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def save_gif(frames: Sequence[np.ndarray], path, fps: float = 6.0) -> Path:
    """An animated GIF (looping) of (H, W, 3) uint8 frames. Pillow merges identical
    consecutive frames, so give frames that differ (e.g. `label`ed with their index) when the
    GIF must keep one frame per frame."""
    if not frames:
        raise ValueError(f"{path}: no frames to animate")
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    path = Path(path)
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        loop=0,
        duration=max(20, round(1000 / fps)),
        disposal=1,
    )
    return path


def save_mp4(frames: Sequence[np.ndarray], path, fps: float = 6.0, crf: int = 23) -> Path:
    """An H.264 MP4 (yuv420p) of (H, W, 3) uint8 frames; odd sizes get one edge row / column."""
    try:
        import av
    except ImportError as e:
        raise ImportError(
            "MP4 overlays need PyAV: pip install 'tam_jax[video]' (or use a GIF)"
        ) from e
    if not frames:
        raise ValueError(f"{path}: no frames to encode")
    h, w = frames[0].shape[:2]
    ph, pw = h % 2, w % 2
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = w + pw, h + ph, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for f in frames:
            f = np.pad(np.asarray(f, np.uint8), ((0, ph), (0, pw), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class VideoOverlayWriter:
    """Overlays of one video: `<out_dir>/<video>/<frame>.png` for every frame added and, on
    close, `<out_dir>/<video>.gif` or `.mp4` (frames labelled with their index, scaled so the
    longer side is at most `max_side`)."""

    def __init__(
        self,
        out_dir,
        video: str,
        animation: str | None = "gif",
        fps: float = 6.0,
        max_side: int | None = 480,
        alpha: float = 0.5,
    ):
        if animation not in (None, *ANIMATIONS):
            raise ValueError(f"animation must be one of {ANIMATIONS} or None, got {animation!r}")
        self.dir = Path(out_dir) / video
        self.dir.mkdir(parents=True, exist_ok=True)
        self.animation_path = Path(out_dir) / f"{video}.{animation}" if animation else None
        self.animation, self.fps, self.max_side, self.alpha = animation, fps, max_side, alpha
        self.frames: list[np.ndarray] = []

    def add(self, name: str, rgb: np.ndarray, masks, colours=None) -> np.ndarray:
        """Draw `masks` over `rgb`, save `<name>.png`, keep it for the animation."""
        drawn = draw_masks(rgb, masks, colours, self.alpha)
        Image.fromarray(drawn).save(self.dir / f"{name}.png")
        if self.animation:
            self.frames.append(label(shrink(drawn, self.max_side), name))
        return drawn

    def close(self) -> Path | None:
        """Write the animation (if any); returns its path."""
        if not self.animation or not self.frames:
            return None
        save = save_gif if self.animation == "gif" else save_mp4
        path = save(self.frames, self.animation_path, self.fps)
        self.frames = []
        return path
