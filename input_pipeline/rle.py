"""COCO run-length encoding, as used by SA-1B and SA-V (data_and_eval.md §1.3).

A mask (H, W) is flattened in column-major order into alternating runs of 0s and 1s, starting
with a (possibly empty) run of 0s. The compressed string stores run i (i > 2) as the delta to
run i - 2, in little-endian 5-bit groups offset by 48 ('0'), bit 0x20 = more groups follow,
bit 0x10 of the last group = sign.

`decode` / `encode` use pycocotools (fast, C). `runs_from_string` is our own pure-Python parser,
used to *validate* an RLE before anything trusts it: pycocotools does not check that the runs
add up to H x W, and decodes a mismatched or truncated string into garbage without a word.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as coco_mask


class RleError(ValueError):
    """An RLE that does not describe a mask of its stated size.

    kind: the preparation report's category, "rle_size_mismatch" (the size is missing, malformed,
    not the image's, or not what the runs cover) or "bad_rle" (a malformed counts string).
    """

    def __init__(self, message: str, kind: str = "bad_rle"):
        super().__init__(message)
        self.kind = kind


def runs_from_string(counts: str | bytes) -> list[int]:
    """Compressed COCO counts -> run lengths. Raises RleError on a malformed string."""
    s = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, shift, more = 0, 0, True
        while more:
            if p >= n:
                raise RleError("truncated counts string (a run continues past the end)")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise RleError(f"character {s[p]!r} at {p} is outside the RLE alphabet")
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift  # sign bit of the last group: negative delta
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise RleError(f"negative run length {x} at run {len(runs)}")
        runs.append(x)
    return runs


def check(rle: dict, expect_hw: Sequence[int] | None = None) -> tuple[int, int]:
    """Validate an RLE dict {"size": [h, w], "counts": str | bytes | list[int]} -> (h, w).

    Checks the keys, the size (against `expect_hw` when given, e.g. the image's), and that the
    runs are non-negative and cover exactly h * w pixels. Raises RleError otherwise.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise RleError(f"an RLE needs 'size' and 'counts', got {_short(rle)}",
                       "rle_size_mismatch")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, (int, float)) and v == int(v) and v >= 0 for v in size)):
        raise RleError(f"RLE size must be [h, w] of non-negative ints, got {size!r}",
                       "rle_size_mismatch")
    h, w = int(size[0]), int(size[1])
    if expect_hw is not None and (h, w) != (int(expect_hw[0]), int(expect_hw[1])):
        raise RleError(f"RLE size {h}x{w} != image size {expect_hw[0]}x{expect_hw[1]}",
                       "rle_size_mismatch")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        runs = runs_from_string(counts)
    elif isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts):
        runs = counts
    else:
        raise RleError(f"RLE counts must be a string or a list of ints >= 0, got {_short(counts)}")
    if sum(runs) != h * w:
        raise RleError(f"RLE runs cover {sum(runs)} pixels, the {h}x{w} mask has {h * w}",
                       "rle_size_mismatch")
    return h, w


def encode(mask_hw: np.ndarray) -> dict:
    """Binary mask (H, W) -> {"size": [H, W], "counts": str} (compressed, as the datasets)."""
    m = np.asfortranarray(np.asarray(mask_hw) > 0, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"encode expects one (H, W) mask, got shape {m.shape}")
    rle = coco_mask.encode(m)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}


def _coco(rle: dict) -> dict:
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed form: pycocotools wants it converted first
        return coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode(rle: dict, validate: bool = True) -> np.ndarray:
    """RLE dict -> uint8 mask (H, W) in {0, 1}. `validate=False` skips `check` (for records
    that preparation has already validated: the hot path of the training pipeline)."""
    if validate:
        check(rle)
    return np.ascontiguousarray(coco_mask.decode(_coco(rle)))


def decode_many(rles: Sequence[dict], validate: bool = True) -> np.ndarray:
    """RLEs of one size -> uint8 (N, H, W); decoded one at a time into one C-order array (a
    batched pycocotools call returns (H, W, N) Fortran order, and transposing costs double)."""
    if not rles:
        raise ValueError("decode_many needs at least one RLE (the size comes from them)")
    h, w = (int(v) for v in rles[0]["size"])
    out = np.empty((len(rles), h, w), np.uint8)
    for i, rle in enumerate(rles):
        if validate:
            check(rle, (h, w))
        out[i] = coco_mask.decode(_coco(rle))
    return out


def area(rle: dict) -> int:
    """Foreground pixel count without decoding."""
    return int(coco_mask.area(_coco(rle)))


def _short(x) -> str:
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."
