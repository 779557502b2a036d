"""JPEG decode / encode / validation (simplejpeg: libjpeg-turbo, releases the GIL).

simplejpeg is bit-identical to PIL on decode and ~3x faster (data_and_eval.md §6.1); unlike
libjpeg's default it raises on a truncated file instead of filling it with grey.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

from input_pipeline.errors import CorruptRecord


def decode(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 (H, W, 3) RGB. Raises ValueError on a corrupt or truncated file."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def decode_at_least(data: bytes, size: int) -> np.ndarray:
    """JPEG -> uint8 (h, w, 3) RGB, scaled down in the DCT domain (1/8 steps, nearly free) to
    the smallest scale keeping each side >= min(its length, size): a 2250x1500 SA-1B image
    decodes at 1688x1125 for 1024 training, at 844x563 for 512."""
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min(h, size),
                                  min_width=min(w, size))


def encode(image_hw3: np.ndarray, quality: int = 95) -> bytes:
    """uint8 (H, W, 3) RGB -> baseline JPEG bytes (quality 95, as SAM 2's frame extraction)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image_hw3, np.uint8), quality=quality,
                                  colorspace="RGB", colorsubsampling="420")


def checked_decode(data: bytes, source: str, record: str,
                   expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode fully (a truncated file fails only at its end) and check the size against the
    annotation's; -> (H, W, 3). Raises CorruptRecord("bad_jpeg" / "size_mismatch")."""
    try:
        image = decode(data)
    except (ValueError, RuntimeError) as e:
        raise CorruptRecord(source, record, "bad_jpeg", f"cannot decode JPEG: {e}") from None
    if expect_hw is not None and image.shape[:2] != tuple(expect_hw):
        raise CorruptRecord(source, record, "size_mismatch",
                            f"JPEG is {image.shape[0]}x{image.shape[1]}, the annotation says "
                            f"{expect_hw[0]}x{expect_hw[1]}")
    return image
