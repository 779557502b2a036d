"""The assembled model: parameter inventory, logical axes, compute dtype, and the single-frame
SAM-head path (`_forward_sam_heads`, `_use_mask_as_output`) against the official SAM2Base."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tam_jax.configs import get_config
from tam_jax.convert.checkpoint import official_to_params
from tam_jax.convert.official import build_official_model, randomize_
from tam_jax.models.tam import (
    EfficientTAM,
    _abstract_variables,
    abstract_param_shapes,
    init_params,
)

ATOL = 1e-3


@pytest.mark.parametrize("name,count", [("efficienttam_ti", 17_866_274),
                                        ("efficienttam_s", 34_056_098)])
def test_parameter_count_equals_official_state_dict(name, count):
    # parameters + the prompt encoder's 256-value Fourier buffer (spec §1)
    shapes = abstract_param_shapes(get_config(name))
    assert sum(int(np.prod(s)) for s in shapes.values()) == count


@pytest.mark.parametrize("name", ["efficienttam_s", "tiny"])
def test_every_parameter_carries_logical_axis_names(name):
    boxed = _abstract_variables(get_config(name))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == x.value.ndim
    names = {n for x in leaves for n in x.names if n is not None}
    assert {"embed", "mlp", "hidden"} <= names


def test_tiny_variant_runs_in_float32_and_bfloat16():
    cfg = get_config("tiny")
    params = init_params(cfg, 0)
    s = cfg.image_size
    x = jax.random.normal(jax.random.PRNGKey(1), (2, s, s, 3))
    pts = jnp.array([[[40.0, 50.0]], [[90.0, 20.0]]])
    lab = jnp.ones((2, 1), jnp.int32)
    out32 = EfficientTAM(cfg).apply({"params": params}, x, pts, lab)
    cfg16 = dataclasses.replace(cfg, compute_dtype="bfloat16")
    out16 = EfficientTAM(cfg16).apply({"params": params}, x, pts, lab)
    for k in ("first", "second"):
        a = np.asarray(out32[k]["low_res_multimasks"])
        b = np.asarray(out16[k]["low_res_multimasks"], np.float32)
        assert a.shape == (2, 3, s // 4, s // 4) and np.isfinite(b).all()
        # bf16 compute tracks f32 (correlation), without being bit-equal
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    assert jax.tree.all(jax.tree.map(lambda p: p.dtype == jnp.float32, params))



def test_other_patch_sizes_keep_memory_on_the_feature_grid():
    """A patch size other than the released 16 (a config for small CPU models): the mask
    downsampler's total stride follows it, so memory features land on the feature grid."""
    from tam_jax.convert.key_table import num_mask_downsampler_stages
    from tam_jax.models.memory_encoder import MemoryEncoder

    cfg = get_config("tiny", **{"vit.patch_size": 8, "image_size": 64})
    assert cfg.feat_size == 8 and num_mask_downsampler_stages(cfg) == 3
    shapes = abstract_param_shapes(cfg)
    assert shapes[("image_encoder", "trunk", "patch_embed", "proj", "kernel")][:2] == (8, 8)
    feats = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, cfg.hidden_dim))
    masks = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 64, 1))
    enc = MemoryEncoder(cfg)
    params = enc.init(jax.random.PRNGKey(0), feats, masks)
    mem, pos = enc.apply(params, feats, masks)
    assert mem.shape == pos.shape == (2, 8, 8, cfg.mem_dim)
    assert np.isfinite(np.asarray(mem)).all()
    with pytest.raises(ValueError, match=r"expected \(B, 8h, 8w, 1\)"):
        enc.apply(params, feats, masks[:, :32, :32])


@pytest.fixture(scope="module")
def pair():
    cfg = dataclasses.replace(get_config("efficienttam_ti_512x512"), image_size=256)
    model = build_official_model(cfg, seed=5)
    randomize_(model, seed=5)
    return cfg, model, official_to_params(model.state_dict(), cfg)


def _run_both(cfg, model, params, feats, points, labels, mask, multimask):
    with torch.no_grad():
        want = model._forward_sam_heads(
            torch.from_numpy(feats).permute(0, 3, 1, 2),
            point_inputs=None if points is None else {
                "point_coords": torch.from_numpy(points),
                "point_labels": torch.from_numpy(labels)},
            mask_inputs=None if mask is None else torch.from_numpy(mask).permute(0, 3, 1, 2),
            multimask_output=multimask,
        )
    got = EfficientTAM(cfg).apply(
        {"params": params}, jnp.asarray(feats), None if points is None else jnp.asarray(points),
        None if labels is None else jnp.asarray(labels),
        None if mask is None else jnp.asarray(mask), multimask, method=EfficientTAM.sam_heads)
    return want, got


_NAMES = ("low_res_multimasks", "high_res_multimasks", "ious", "low_res_masks", "high_res_masks",
          "obj_ptr", "object_score_logits")


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["clicks", "none", "mask"])
def test_sam_heads_match_official(pair, multimask, prompt):
    cfg, model, params = pair
    rng = np.random.RandomState(0)
    feats = rng.normal(size=(3, 16, 16, 256)).astype(np.float32)
    points = labels = mask = None
    if prompt == "clicks":
        points = rng.uniform(0, 256, (3, 2, 2)).astype(np.float32)
        labels = np.array([[1, -1], [1, 0], [0, 1]], np.int32)
    if prompt == "mask":  # full-resolution mask input: resized (antialiased) to 64x64 first
        mask = (rng.uniform(size=(3, 256, 256, 1)) > 0.5).astype(np.float32)
    want, got = _run_both(cfg, model, params, feats, points, labels, mask, multimask)
    worst = 0.0
    for name, w in zip(_NAMES, want):
        g = np.asarray(got[name])
        assert g.shape == tuple(w.shape), name
        d = float(np.abs(g - w.numpy()).max())
        worst = max(worst, d)
        assert d <= ATOL, (name, d)
    print(f"\n  sam_heads {prompt} multimask={multimask}: worst max|d| {worst:.2e}")


def test_masked_point_slots_are_exactly_absent(pair):
    """A fixed click buffer (training's correction loop): slots with point_valid False, holding
    arbitrary coordinates and labels, give the official result of the valid points alone, with
    a different number of valid points per object."""
    cfg, model, params = pair
    rng = np.random.RandomState(1)
    feats = rng.normal(size=(3, 16, 16, 256)).astype(np.float32)
    mask = rng.normal(size=(3, 64, 64, 1)).astype(np.float32)  # previous logits fed back
    points = rng.uniform(0, 256, (3, 4, 2)).astype(np.float32)
    labels = rng.randint(0, 2, (3, 4)).astype(np.int32)
    counts = [1, 4, 2]
    valid = np.arange(4)[None] < np.array(counts)[:, None]
    got = EfficientTAM(cfg).apply(
        {"params": params}, jnp.asarray(feats), jnp.asarray(points), jnp.asarray(labels),
        jnp.asarray(mask), False, point_valid=jnp.asarray(valid), method=EfficientTAM.sam_heads)
    unmasked = EfficientTAM(cfg).apply(
        {"params": params}, jnp.asarray(feats), jnp.asarray(points), jnp.asarray(labels),
        jnp.asarray(mask), False, method=EfficientTAM.sam_heads)
    for i, c in enumerate(counts):
        want, _ = _run_both(cfg, model, params, feats[i:i + 1], points[i:i + 1, :c],
                            labels[i:i + 1, :c], mask[i:i + 1], False)
        for name, w in zip(_NAMES, want):
            d = float(np.abs(np.asarray(got[name][i:i + 1]) - w.numpy()).max())
            assert d <= ATOL, (i, name, d)
    # the mask matters: the garbage slots, unmasked, change objects 0 and 2 (not 1, all valid)
    moved = np.abs(np.asarray(got["low_res_masks"]) - np.asarray(unmasked["low_res_masks"]))
    assert moved[0].max() > 1e-2 and moved[2].max() > 1e-2 and moved[1].max() <= ATOL


def test_object_absent_gating_and_no_object_pointer(pair):
    cfg, model, params = pair
    # Push the object-score head negative for every input: masks become -1024, the pointer
    # becomes no_obj_ptr.
    params = jax.tree.map(np.copy, params)
    model = build_official_model(cfg, seed=5)
    model.load_state_dict({k: v.clone() for k, v in pair[1].state_dict().items()})
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(-1e4)
    params["sam_mask_decoder"]["pred_obj_score_head"]["layers_2"]["bias"][...] = -1e4
    feats = np.random.RandomState(1).normal(size=(2, 16, 16, 256)).astype(np.float32)
    pts = np.array([[[30.0, 40.0]], [[200.0, 100.0]]], np.float32)
    lab = np.ones((2, 1), np.int32)
    want, got = _run_both(cfg, model, params, feats, pts, lab, None, True)
    assert (np.asarray(got["low_res_masks"]) == -1024.0).all()
    np.testing.assert_allclose(np.asarray(got["obj_ptr"]), want[5].numpy(), atol=ATOL)
    np.testing.assert_allclose(np.asarray(got["obj_ptr"]),
                               np.broadcast_to(params["no_obj_ptr"], (2, 256)), atol=1e-6)


def test_mask_as_output_matches_official(pair):
    cfg, model, params = pair
    rng = np.random.RandomState(2)
    feats = rng.normal(size=(2, 16, 16, 256)).astype(np.float32)
    mask = np.zeros((2, 256, 256, 1), np.float32)
    mask[0, 60:150, 40:200] = 1.0  # object present in 0, absent (empty mask) in 1
    with torch.no_grad():
        want = model._use_mask_as_output(torch.from_numpy(feats).permute(0, 3, 1, 2), None,
                                         torch.from_numpy(mask).permute(0, 3, 1, 2))
    got = EfficientTAM(cfg).apply({"params": params}, jnp.asarray(feats), jnp.asarray(mask),
                                  method=EfficientTAM.mask_as_output)
    for name, w in zip(_NAMES, want):
        d = float(np.abs(np.asarray(got[name]) - w.numpy()).max())
        assert d <= ATOL, (name, d)
