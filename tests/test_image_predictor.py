"""Image predictor end to end against the official `SAM2ImagePredictor`, float32, random weights.

The official predictor imports three torchvision transforms; PyPI's torchvision cannot be
imported beside the CPU torch here, so `tam_jax.convert.official.install_torchvision_standin`
provides ToTensor / Resize (bilinear `F.interpolate`, antialias=True, align_corners=False) /
Normalize with torchvision's arithmetic. Everything else is the official predictor's code.

Bar: max |logit difference| <= 1e-3 and binarized masks equal on >= 99.99 % of pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tam_jax.configs import get_config
from tam_jax.convert.checkpoint import official_to_params
from tam_jax.convert.official import build_official_model, official_image_predictor, randomize_
from tam_jax.predictors import ImagePredictor

ATOL = 1e-3
MIN_AGREEMENT = 0.9999


def _image(h, w, seed):
    """A smooth random image with edges (plain noise would be an unrealistic encoder input)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fy, fx, ph = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6)
        img[..., c] = 128 + 90 * np.sin(fy * yy + fx * xx + ph)
    img[h // 4: h // 2, w // 3: 2 * w // 3] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


PROMPTS = {
    "one click": dict(point_coords=[[210.0, 140.0]], point_labels=[1]),
    "clicks": dict(point_coords=[[210.0, 140.0], [60.0, 250.0], [300.0, 40.0]],
                   point_labels=[1, 0, 1], multimask_output=False),
    "box": dict(box=[120.0, 70.0, 330.0, 260.0], multimask_output=False),
    "box and click": dict(box=[120.0, 70.0, 330.0, 260.0], point_coords=[[200.0, 150.0]],
                          point_labels=[0]),
}


@pytest.fixture(scope="module", params=["efficienttam_ti_512x512", "efficienttam_s_512x512",
                                        "efficienttam_s"])
def predictors(request):
    cfg = get_config(request.param)
    model = build_official_model(cfg, seed=3)
    randomize_(model, seed=3)
    ours = ImagePredictor(cfg, official_to_params(model.state_dict(), cfg))
    theirs = official_image_predictor(model)
    image = _image(300, 420, seed=3)
    ours.set_image(image)
    with torch.no_grad():
        theirs.set_image(image)
    return cfg, ours, theirs


def _compare(name, a, b):
    (ma, ia, la), (mb, ib, lb) = a, b
    assert ma.shape == mb.shape and la.shape == lb.shape, name
    d_masks = float(np.abs(ma - mb).max())
    d_low = float(np.abs(la - lb).max())
    d_iou = float(np.abs(ia - ib).max())
    agree = float(((ma > 0) == (mb > 0)).mean())
    print(f"\n  {name}: max|d logits| {d_masks:.2e} (low-res {d_low:.2e}), "
          f"max|d iou| {d_iou:.2e}, binarized agreement {agree * 100:.4f}%")
    assert d_masks <= ATOL and d_low <= ATOL and d_iou <= ATOL, name
    assert agree >= MIN_AGREEMENT, name


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_prompts_match_official(predictors, prompt):
    cfg, ours, theirs = predictors
    kw = dict(PROMPTS[prompt], return_logits=True)
    np_kw = {k: np.asarray(v) if isinstance(v, list) else v for k, v in kw.items()}
    with torch.no_grad():
        want = theirs.predict(**np_kw)
    got = ours.predict(**np_kw)
    _compare(f"{cfg.name} {prompt}", got, want)


def test_mask_input_and_thresholded_masks_match_official(predictors):
    cfg, ours, theirs = predictors
    with torch.no_grad():
        _, iou, low = theirs.predict(point_coords=np.array([[210.0, 140.0]]),
                                     point_labels=np.array([1]))
    prev = low[np.argmax(iou)][None]
    for extra in ({}, dict(point_coords=np.array([[60.0, 250.0]]), point_labels=np.array([0]))):
        with torch.no_grad():
            want = theirs.predict(mask_input=prev, multimask_output=False, return_logits=True,
                                  **extra)
        got = ours.predict(mask_input=prev, multimask_output=False, return_logits=True, **extra)
        _compare(f"{cfg.name} mask input{' + click' if extra else ''}", got, want)
    with torch.no_grad():
        want_bool, _, _ = theirs.predict(box=np.array([120.0, 70.0, 330.0, 260.0]))
    got_bool, _, _ = ours.predict(box=np.array([120.0, 70.0, 330.0, 260.0]))
    assert got_bool.dtype == bool and got_bool.shape == want_bool.shape == (3, 300, 420)
    assert (got_bool == want_bool).mean() >= MIN_AGREEMENT


def test_bad_input_is_a_clear_error(predictors):
    _, ours, _ = predictors
    with pytest.raises(ValueError, match="HxWx3"):
        ours.set_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ours.set_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="at least one prompt"):
        ours.predict()
    with pytest.raises(ValueError, match="point_labels"):
        ours.predict(point_coords=np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="set_image"):
        ImagePredictor(ours.cfg, ours.params).predict(point_coords=[[1, 1]], point_labels=[1])
