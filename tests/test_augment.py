"""SAM 2's training augmentations (input_pipeline/augment.py, examples.render): geometry is
exact where it can be, masks stay aligned with the pixels they label, the composed colour
matrix equals the ops applied one after the other, and SAM 2's affine-skip rule holds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from input_pipeline import augment, examples, jpeg, rle

S = 64


def _params(**kw) -> augment.ClipParams:
    base = augment.ClipParams(flip=False, angle=0.0, shear=0.0, clip_ops=(), grayscale=False,
                              frame_ops=((),) * 4)
    return dataclasses.replace(base, **kw)


def test_identity_and_flip_are_exact():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    mask = (rng.random((S, S)) < 0.3).astype(np.uint8)
    fwd = augment.geometry(_params(), (S, S), S)
    np.testing.assert_array_equal(augment.warp_image(image, fwd, S), image)
    np.testing.assert_array_equal(augment.warp_mask(mask, fwd, S), mask)
    fwd = augment.geometry(_params(flip=True), (S, S), S)
    np.testing.assert_array_equal(augment.warp_image(image, fwd, S), image[:, ::-1])
    np.testing.assert_array_equal(augment.warp_mask(mask, fwd, S), mask[:, ::-1])


def test_resize_maps_masks_stored_at_another_size():
    """SA-V frames may be stored smaller than their masks: a mask at another size (here 2x the
    frame's rows, 3x its columns) lands on the same output pixels as the frame's content."""
    mask_big = np.zeros((80, 180), np.uint8)
    mask_big[20:60, 45:135] = 1  # frame coords: rows 10:30, cols 15:45 of (40, 60)
    fwd = augment.geometry(_params(), (40, 60), 60)
    out = augment.warp_mask(mask_big, augment.mask_forward(fwd, (40, 60), (80, 180)), 60)
    expected = np.zeros((60, 60), np.uint8)
    expected[15:45, 15:45] = 1  # rows scale by 60 / 40, cols by 1
    np.testing.assert_array_equal(out, expected)


def _painted_clip(seed: int, frame_hw=(60, 80), mask_hw=(120, 160)):
    """Frames with a textured background and one object painted pure green exactly where its
    mask (stored at mask_hw) is; -> (JPEGs, per-frame RLE counts, masks)."""
    rng = np.random.default_rng(seed)
    frames, rles, masks = [], [], []
    mh, mw = mask_hw
    yy, xx = np.mgrid[:mh, :mw]
    for t in range(4):
        cy, cx = mh * (0.4 + 0.05 * t), mw * (0.45 + 0.03 * t)
        m = (((yy - cy) / (mh * 0.22)) ** 2 + ((xx - cx) / (mw * 0.18)) ** 2) < 1
        small = m.reshape(frame_hw[0], mh // frame_hw[0], frame_hw[1], mw // frame_hw[1]).mean(
            (1, 3)) > 0.5
        bg = np.stack([rng.integers(100, 256, frame_hw), rng.integers(0, 80, frame_hw),
                       rng.integers(100, 256, frame_hw)], -1).astype(np.uint8)  # magenta noise
        bg[small] = (0, 255, 0)
        frames.append(jpeg.encode(bg, quality=100))
        rles.append([rle.encode(m)["counts"].encode()])
        masks.append(m)
    return frames, rles, masks


@pytest.mark.parametrize("seed", range(6))
def test_masks_stay_aligned_with_the_pixels_they_label(seed):
    """The full video recipe (flip, affine, resize, colour jitter): the output pixels that are
    still green are the output mask, up to the blended boundary."""
    frames, rles, _ = _painted_clip(seed)
    cfg = augment.AugmentConfig(resolution=96)
    params = augment.sample_params(np.random.default_rng(seed), cfg, 4)
    params = dataclasses.replace(params, grayscale=False,  # keep green recognisable
                                 angle=(-25.0, 25.0, 12.0, -8.0, 0.0, 18.0)[seed],
                                 shear=(20.0, -20.0, 5.0, 0.0, -12.0, 9.0)[seed])
    out = examples.render(frames, rles, (120, 160), params, cfg, 2, examples.OutputConfig())
    assert out["obj_valid"].tolist() == [True, False]
    assert not out["masks"][:, 1].any()
    for t in range(4):
        image = out["images"][t].astype(int)
        green = (image[..., 1] > 180) & (image[..., 0] < 90) & (image[..., 2] < 90)
        mask = out["masks"][t, 0]
        iou = (green & mask).sum() / (green | mask).sum()
        assert mask.sum() > 200 and iou > 0.9, (t, iou)


def test_affine_that_empties_a_first_frame_mask_is_dropped():
    """SAM 2 skips the clip's affine when it would empty a mask visible in the first frame."""
    h, w = 40, 40
    corner = np.zeros((h, w), bool)
    corner[:3, :3] = True  # rotating 25 deg about the centre moves the corner out of frame
    frames = [jpeg.encode(np.full((h, w, 3), 128, np.uint8))] * 2
    rles = [[rle.encode(corner)["counts"].encode()]] * 2
    cfg = augment.AugmentConfig.none(40)
    rotated = _params(angle=25.0, frame_ops=((), ()))
    fwd = augment.geometry(rotated, (h, w), 40)
    assert not augment.warp_mask(corner.astype(np.uint8), fwd, 40).any()
    out = examples.render(frames, rles, (h, w), rotated, cfg, 1, examples.OutputConfig())
    plain = examples.render(frames, rles, (h, w), rotated.without_affine(), cfg, 1,
                            examples.OutputConfig())
    np.testing.assert_array_equal(out["masks"], plain["masks"])
    assert out["masks"][:, 0].sum() == 2 * 9


def _sequential_colour(image: np.ndarray, ops) -> np.ndarray:
    """torchvision's definitions, one op after the other, in float (no intermediate clamps)."""
    x = image.astype(np.float64)
    w = augment.GREY_WEIGHTS
    for op, f in ops:
        grey = x @ w
        if op == "brightness":
            x = f * x
        elif op == "contrast":
            x = f * x + (1 - f) * grey.mean()
        elif op == "saturation":
            x = f * x + (1 - f) * grey[..., None]
        elif op == "grayscale":
            x = np.repeat(grey[..., None], 3, -1)
    return x


@pytest.mark.parametrize("grayscale", [False, True])
def test_composed_colour_matrix_equals_the_ops_in_sequence(grayscale):
    rng = np.random.default_rng(1)
    image = rng.integers(60, 190, (48, 48, 3), dtype=np.uint8)  # nothing clamps
    for seed in range(5):
        params = augment.sample_params(np.random.default_rng(seed), augment.AugmentConfig(), 1)
        params = dataclasses.replace(params, grayscale=grayscale)
        ops = augment.frame_colour_ops(params, 0)
        assert len(ops) == 6 + grayscale
        got = augment.apply_colour(image, ops).astype(np.float64)
        # the mean grey is measured on every other pixel: well under a level on this image
        np.testing.assert_allclose(got, _sequential_colour(image, ops), atol=1.5)


def test_jitter_factors_and_order_follow_the_config():
    cfg = augment.AugmentConfig()
    orders, flips, greys = set(), 0, 0
    for seed in range(400):
        p = augment.sample_params(np.random.default_rng(seed), cfg, 8)
        assert -25 <= p.angle <= 25 and -20 <= p.shear <= 20
        for op, f in p.clip_ops:
            assert abs(f - 1) <= {"brightness": 0.1, "contrast": 0.03, "saturation": 0.03}[op]
        for ops in p.frame_ops:
            for op, f in ops:
                assert abs(f - 1) <= {"brightness": 0.1, "contrast": 0.05, "saturation": 0.05}[op]
        assert len({ops for ops in p.frame_ops}) == 8  # a fresh draw per frame
        orders.add(tuple(op for op, _ in p.clip_ops))
        flips += p.flip
        greys += p.grayscale
    assert len(orders) == 6  # every order of the three ops occurs
    assert 160 < flips < 240 and 5 <= greys <= 40  # p = 0.5, p = 0.05
    image_cfg = augment.AugmentConfig.image()
    p = augment.sample_params(np.random.default_rng(0), image_cfg, 1)
    assert not p.has_affine and augment.frame_colour_ops(p, 0) == []


def test_host_normalisation_and_packed_masks():
    frames, rles, _ = _painted_clip(0)
    cfg = augment.AugmentConfig.none(64)
    params = _params()
    plain = examples.render(frames, rles, (120, 160), params, cfg, 2, examples.OutputConfig())
    host = examples.render(frames, rles, (120, 160), params, cfg, 2,
                           examples.OutputConfig(normalize="host", pack_masks=True))
    np.testing.assert_allclose(host["images"], augment.normalize(plain["images"]))
    assert host["masks"].shape == (4, 2, 64, 8) and host["masks"].dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(host["masks"], axis=-1).astype(bool),
                                  plain["masks"])
    with pytest.raises(ValueError, match="normalize"):
        examples.OutputConfig(normalize="gpu")


@pytest.mark.parametrize("params", [_params(), _params(flip=True), _params(angle=17.0, shear=-9.0),
                                    _params(flip=True, angle=-25.0)])
@pytest.mark.parametrize("src_hw", [(50, 70), (200, 90)])
def test_fortran_masks_warp_like_c_ones(params, src_hw):
    """pycocotools' Fortran-order masks take a faster path (a gather for axis-aligned maps):
    it gives what OpenCV's warp of the same mask in C order gives."""
    rng = np.random.default_rng(src_hw[0])
    mask = (rng.random(src_hw) < 0.5).astype(np.uint8)
    fwd = augment.geometry(params, src_hw, 64)
    got = augment.warp_mask_fortran(np.asfortranarray(mask), fwd, 64)
    want = augment.warp_mask(mask, fwd, 64)
    assert got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, want)


def test_frame_shift_moves_each_later_frame_with_its_mask():
    """`frame_shift` (not SAM 2's): frame 0 stays, each later frame moves by its own whole-pixel
    offset within the bound, its mask with it (the green pixels are still the mask), and what
    comes in is the fill colour / 0. Its draws come last, so SAM 2's own draws do not change."""
    frames, rles, _ = _painted_clip(0)
    cfg = augment.AugmentConfig.none(96)
    plain = examples.render(frames, rles, (120, 160), _params(), cfg, 1, examples.OutputConfig())
    shifted_cfg = dataclasses.replace(cfg, frame_shift=0.125)
    params = augment.sample_params(np.random.default_rng(3), shifted_cfg, 4)
    shifts = params.frame_shifts
    assert len(shifts) == 4 and shifts[0] == (0, 0)
    assert all(abs(d) <= 12 for xy in shifts for d in xy) and len(set(shifts[1:])) > 1
    out = examples.render(frames, rles, (120, 160), params, shifted_cfg, 1,
                          examples.OutputConfig())
    for t, (dx, dy) in enumerate(shifts):
        want_mask = np.roll(plain["masks"][t, 0], (dy, dx), (0, 1))
        want_img = np.roll(plain["images"][t], (dy, dx), (0, 1))
        rows = slice(max(0, dy), 96 + min(0, dy))
        cols = slice(max(0, dx), 96 + min(0, dx))
        np.testing.assert_array_equal(out["masks"][t, 0][rows, cols], want_mask[rows, cols])
        np.testing.assert_array_equal(out["images"][t][rows, cols], want_img[rows, cols])
        inside = np.zeros((96, 96), bool)
        inside[rows, cols] = True
        assert not out["masks"][t, 0][~inside].any()
        assert (out["images"][t][~inside] == np.asarray(augment.FILL_RGB, np.uint8)).all()
    # drawn after everything else: the recipe's own draws are the same with and without it
    full = augment.AugmentConfig(resolution=96)
    off = augment.sample_params(np.random.default_rng(5), full, 4)
    on = augment.sample_params(np.random.default_rng(5),
                               dataclasses.replace(full, frame_shift=0.1), 4)
    assert off.frame_shifts == () and len(on.frame_shifts) == 4
    assert dataclasses.replace(on, frame_shifts=()) == off
    with pytest.raises(ValueError, match="frame_shift"):
        augment.AugmentConfig(frame_shift=1.5)
