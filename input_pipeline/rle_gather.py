"""Decode a COCO RLE straight into a nearest-neighbour resampling of its mask.

    grid = Grid(rows, cols)                     # once per item: the same for all its masks
    out = decode_gather(counts, (H, W), grid)   # == decode(rle)[rows][:, cols]

Why: an SA-1B mask is 1500 x 2250 and training wants it at 1024 x 1024. Decoding it in full
(pycocotools: 3.4 ms, one byte written per pixel) and then gathering the 1024 rows and columns
(0.9 ms) spends most of an SA-1B item's time on pixels that are thrown away (docs/benchmarks.md,
"Input pipeline"). The runs already say which pixels are set: this module parses them with
numpy, maps each run's [start, end) in the column-major flat index onto the count of sampled
positions before it, and repeats each run's value that many times, so it writes len(rows) x
len(cols) bytes and never the full mask (0.6 ms for an SA-1B mask to 1024^2). The result is
bit-identical to decoding then gathering (tests/test_rle_gather.py checks it against
pycocotools).

Only axis-aligned maps (resize, flip) are a row / column gather; an affine warp still needs
the full mask (`input_pipeline.augment.warp_mask_fortran`).

The counts string should already be valid for (H, W) (`rle.check`, done at preparation): this
is the training hot path, so it only checks that the runs cover H x W (an `rle.RleError`
otherwise, where pycocotools would decode garbage without a word).
"""

from __future__ import annotations

import cv2
import numpy as np

from input_pipeline import rle


def runs(counts: bytes | str) -> np.ndarray:
    """Compressed COCO counts -> run lengths (int64), vectorised (`rle.runs_from_string` is the
    validating pure-Python reference; this one trusts its input).

    Each value is little-endian 5-bit groups (char - 48), bit 0x20 = another group follows,
    bit 0x10 of a value's last group = negative; value i > 2 is a delta to value i - 2."""
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    c = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    last = (c & 0x20) == 0  # the final group of each value
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index in value
    x = np.add.reduceat((c & 0x1F) << (5 * group), starts)
    negative = (c[ends] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * (ends - starts + 1))), x)
    out = np.empty_like(x)
    out[:3] = x[:3]
    # value m > 2 adds value m - 2: a running sum over each parity, from index 1 (odd) and
    # from index 2 (even; value 0 is not added to value 2)
    out[1::2] = np.cumsum(x[1::2])
    out[2::2] = np.cumsum(x[2::2])
    return out


def _before(points: np.ndarray, h: int, cols_u: np.ndarray, rows_s: np.ndarray) -> np.ndarray:
    """For flat column-major positions, how many sampled grid positions (unique sorted source
    columns x sorted source rows, in that order) lie strictly before each."""
    x, y = np.divmod(points, h)
    full_cols = np.searchsorted(cols_u, x, side="left")  # sampled columns wholly before
    in_col = np.searchsorted(rows_s, y, side="left")  # sampled rows before y in column x
    on_sampled = (full_cols < cols_u.size) & (cols_u[np.minimum(full_cols, cols_u.size - 1)] == x)
    return full_cols * rows_s.size + np.where(on_sampled, in_col, 0)


class Grid:
    """The sampled grid of a nearest-neighbour resampling, prepared once for every mask it
    applies to (an item's 64 masks share one; preparing it costs ~80 us, a mask ~600 us).

    rows / cols: source indices in [0, H) / [0, W), any order (a flip is a decreasing
    `cols`); repeated indices (upsampling) are fine."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray):
        rows = np.asarray(rows, np.intp)
        cols = np.asarray(cols, np.intp)
        self.shape = (rows.size, cols.size)
        self.cols_u, col_of = np.unique(cols, return_inverse=True)  # sorted unique columns
        row_order = np.argsort(rows, kind="stable")
        self.rows_s = rows[row_order]  # sorted rows
        # (unique cols, sorted rows) -> (cols, rows) in the caller's order; None = identity
        self.col_of = (col_of if col_of.size != self.cols_u.size or np.any(np.diff(col_of) != 1)
                       else None)
        self.row_inverse = None
        if np.any(np.diff(row_order) != 1):
            self.row_inverse = np.empty_like(row_order)
            self.row_inverse[row_order] = np.arange(rows.size)


def decode_gather(counts: bytes | str, hw: tuple[int, int], grid: Grid,
                  out: np.ndarray | None = None) -> np.ndarray:
    """RLE of an (H, W) mask -> uint8 grid.shape 0/1 equal to `mask[rows][:, cols]`; written
    into `out` when given (C-contiguous uint8 of that shape)."""
    h, w = hw
    lengths = runs(counts)
    bounds = np.concatenate([[0], np.cumsum(lengths)])  # run i covers [bounds[i], bounds[i+1])
    if bounds[-1] != h * w or (lengths < 0).any():  # cheap; a full check is rle.check's job
        raise rle.RleError(f"RLE runs cover {int(bounds[-1])} pixels, not {h} x {w} = {h * w}",
                           "rle_size_mismatch")
    at = _before(bounds, h, grid.cols_u, grid.rows_s)  # sampled positions before each boundary
    # run i (value i % 2) covers sampled positions [at[i], at[i+1]) of the (unique cols,
    # sorted rows) grid in column-major order: one np.repeat writes the grid (0.06 ms for
    # 1024^2; a +1/-1 difference array and np.cumsum take 2.3 ms)
    values = (np.arange(lengths.size) & 1).astype(np.uint8)
    sampled = np.repeat(values, np.diff(at)).reshape(grid.cols_u.size, grid.rows_s.size)
    if grid.col_of is not None:
        sampled = sampled[grid.col_of]  # repeats / reordering of columns (a flip: reversed)
    if grid.row_inverse is not None:
        sampled = sampled[:, grid.row_inverse]
    sampled = np.ascontiguousarray(sampled)
    if out is None:
        return cv2.transpose(sampled)
    cv2.transpose(sampled, dst=out)
    return out
