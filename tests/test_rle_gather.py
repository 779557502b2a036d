"""input_pipeline/rle_gather.py: an RLE decoded straight to a row / column gather of its mask
equals pycocotools' full decode then the gather, and the pipeline's axis-aligned masks equal
OpenCV's nearest-neighbour warp of the fully decoded mask."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from input_pipeline import augment, examples, jpeg, rle, rle_gather


def _masks(rng: np.random.Generator, hw: tuple[int, int]):
    """Masks with few and many runs: blobs, noise, empty, full, one pixel, edge columns."""
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    blob = (((yy - h * 0.4) / (h * 0.3)) ** 2 + ((xx - w * 0.6) / (w * 0.25)) ** 2) < 1
    noise = rng.random(hw) < 0.5
    sparse = rng.random(hw) < 0.01
    pixel = np.zeros(hw, bool)
    pixel[h - 1, w - 1] = True
    edges = np.zeros(hw, bool)
    edges[:, 0] = edges[:, -1] = True
    return [blob, noise, sparse, np.zeros(hw, bool), np.ones(hw, bool), pixel, edges]


def _counts(mask: np.ndarray) -> bytes:
    return rle.encode(mask.astype(np.uint8))["counts"].encode()


@pytest.mark.parametrize("hw", [(7, 5), (120, 160), (1500, 2250)])
def test_vectorised_runs_equal_the_reference_parser(hw):
    """Negative deltas, multi-group values (runs > 2^20 at 1500 x 2250) and single runs."""
    for mask in _masks(np.random.default_rng(hw[0]), hw):
        counts = _counts(mask)
        got = rle_gather.runs(counts)
        assert got.tolist() == rle.runs_from_string(counts)
        assert int(got.sum()) == hw[0] * hw[1]
        assert rle_gather.runs(counts.decode()).tolist() == got.tolist()  # str works too


@pytest.mark.parametrize("hw", [(9, 13), (120, 160), (300, 450)])
def test_decode_gather_equals_decode_then_gather(hw):
    h, w = hw
    rng = np.random.default_rng(h * w)
    index_sets = [
        (np.arange(h), np.arange(w)),  # identity
        (np.arange(h), np.arange(w)[::-1]),  # flip
        (np.linspace(0, h - 1, 64).astype(int), np.linspace(0, w - 1, 64).astype(int)),  # shrink
        (np.repeat(np.arange(h), 3), np.repeat(np.arange(w), 2)[::-1]),  # enlarge + flip
        (rng.integers(0, h, 37), rng.integers(0, w, 53)),  # any order, repeats
    ]
    for mask in _masks(rng, hw):
        counts = _counts(mask)
        full = coco_mask.decode({"size": [h, w], "counts": counts})
        for rows, cols in index_sets:
            grid = rle_gather.Grid(rows, cols)
            got = rle_gather.decode_gather(counts, hw, grid)
            want = full[rows][:, cols]
            assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(got, want)
            out = np.full((len(rows), len(cols)), 7, np.uint8)
            assert rle_gather.decode_gather(counts, hw, grid, out=out) is out
            np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("src_hw", [(1500, 2250), (50, 70), (30, 20)])
def test_gather_indices_reproduce_the_opencv_warp(flip, src_hw):
    """The training path (gather_indices + decode_gather) == OpenCV's nearest warp of the
    decoded mask, for shrinking, enlarging and flipping maps."""
    params = augment.ClipParams(flip=flip, angle=0.0, shear=0.0, clip_ops=(), grayscale=False,
                                frame_ops=((),))
    fwd = augment.geometry(params, src_hw, 64)
    rows, cols = augment.gather_indices(fwd, src_hw, 64)
    for mask in _masks(np.random.default_rng(1), src_hw):
        got = rle_gather.decode_gather(_counts(mask), src_hw, rle_gather.Grid(rows, cols))
        np.testing.assert_array_equal(got, augment.warp_mask(mask.astype(np.uint8), fwd, 64))
    rotated = augment.geometry(dataclasses.replace(params, angle=10.0), src_hw, 64)
    assert augment.gather_indices(rotated, src_hw, 64) is None


def test_render_of_an_image_takes_the_runs_path_and_matches_the_warp():
    """An SA-1B-style item (flip + resize, masks larger than the decoded frame): every output
    mask is the OpenCV warp of the fully decoded mask."""
    rng = np.random.default_rng(3)
    mask_hw, frame_hw = (150, 225), (150, 225)
    image = rng.integers(0, 256, frame_hw + (3,), dtype=np.uint8)
    masks = _masks(rng, mask_hw)
    counts = [_counts(m) for m in masks]
    cfg = augment.AugmentConfig.image(resolution=96)
    for flip in (False, True):
        params = augment.ClipParams(flip=flip, angle=0.0, shear=0.0, clip_ops=(),
                                    grayscale=False, frame_ops=((),))
        out = examples.render([jpeg.encode(image, quality=95)], [counts], mask_hw, params, cfg,
                              len(masks) + 2, examples.OutputConfig())
        fwd = augment.geometry(params, frame_hw, 96)
        for k, m in enumerate(masks):
            np.testing.assert_array_equal(out["masks"][0, k],
                                          augment.warp_mask(m.astype(np.uint8), fwd, 96) == 1)
        assert not out["masks"][0, len(masks):].any()


def test_runs_that_do_not_cover_the_mask_are_an_error_not_garbage():
    """pycocotools decodes such a string without a word; the training path names it."""
    counts = _counts(np.ones((10, 12), bool))
    with pytest.raises(rle.RleError, match="cover 120 pixels, not 10 x 13"):
        rle_gather.decode_gather(counts, (10, 13), rle_gather.Grid(np.arange(10), np.arange(13)))
