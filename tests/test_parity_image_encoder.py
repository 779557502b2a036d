"""Parity of the image encoder (ViT trunk, ViTDet neck) with the official PyTorch modules.

The official `ImageEncoder` of a `SAM2Base` with random weights (`randomize_`) is the oracle; its
weights are loaded into the Flax modules through the converter's key table. Small inputs keep it
fast: blocks on a 16 x 16 grid (window 14 pads it to 28), whole encoders at 256 and 512 px.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tam_jax.configs import get_config
from tam_jax.convert.key_table import torch_to_flax
from tam_jax.convert.official import build_official_model, randomize_
from tam_jax.models.vit import (
    ImageEncoder,
    ViTBlock,
    ViTDetNeck,
    bicubic_matrix,
    resize_pos_embed_bicubic,
)

TOL = 1e-3


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return _np(t.permute(0, 2, 3, 1))


def _check(capsys, label: str, pairs: dict[str, tuple], tol: float = TOL) -> None:
    """Assert max-abs differences (ours, official) <= tol and print them."""
    diffs = {}
    for name, (ours, want) in pairs.items():
        ours, want = np.asarray(ours, np.float32), _np(want)
        assert ours.shape == want.shape, f"{label}/{name}: {ours.shape} vs {want.shape}"
        diffs[name] = float(np.abs(ours - want).max())
    with capsys.disabled():
        print(f"\n[image encoder parity] {label}: " +
              ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    assert not bad, f"{label}: max abs diff above {tol}: {bad}"


@functools.lru_cache(maxsize=8)
def _official(name: str, image_size: int, seed: int = 0):
    """(cfg, official image encoder with random weights, its state dict under `image_encoder.`)."""
    cfg = dataclasses.replace(get_config(name), image_size=image_size)
    model = build_official_model(cfg, seed=seed)
    randomize_(model, seed=seed + 1)
    enc = model.image_encoder
    sd = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    return cfg, enc, sd


def _paths(tree: dict, prefix: tuple = ()) -> dict[str, tuple]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_paths(v, (*prefix, k)))
        else:
            out["/".join((*prefix, k))] = tuple(v.shape)
    return out


# ---------------------------------------------------------------------------- pos embed


@pytest.mark.parametrize("out_hw", [(64, 64), (32, 32), (16, 16), (8, 8), (20, 12)])
def test_pos_embed_resize_matches_torch_bicubic(capsys, out_hw):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 64, generator=g)
    want = F.interpolate(
        pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2), size=out_hw, mode="bicubic",
        align_corners=False,
    )
    ours = resize_pos_embed_bicubic(jnp.asarray(_np(pos)), *out_hw)
    _check(capsys, f"pos_embed 14->{out_hw}", {"pos": (ours, _nhwc(want))}, tol=1e-5)


def test_bicubic_matrix_is_not_jax_cubic():
    """The torch kernel (a = -0.75) differs from jax.image.resize's cubic (a = -0.5)."""
    x = np.random.default_rng(0).standard_normal((14,)).astype(np.float32)
    ours = bicubic_matrix(14, 64) @ x
    jax_cubic = np.asarray(jax.image.resize(jnp.asarray(x), (64,), "cubic"))
    assert np.abs(ours - jax_cubic).max() > 1e-2
    np.testing.assert_allclose(bicubic_matrix(14, 64).sum(axis=1), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["efficienttam_ti", "efficienttam_s"])
def test_param_paths_match_official(name):
    cfg, _, sd = _official(name, 256)
    assert len(sd) == 153
    assert sum(k.startswith("image_encoder.trunk.") for k in sd) == 147
    want = _paths(torch_to_flax(sd, "image_encoder."))
    shapes = jax.eval_shape(ImageEncoder(cfg).init, jax.random.key(0),
                            jnp.zeros((1, 256, 256, 3), jnp.float32))
    ours = _paths(nn.unbox(shapes)["params"])
    assert ours.keys() == want.keys(), (sorted(ours.keys() ^ want.keys()))
    assert ours == want


# ---------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("name", ["efficienttam_ti", "efficienttam_s"])
@pytest.mark.parametrize("index", [0, 2], ids=["window", "global"])
def test_block_parity(capsys, name, index):
    cfg, enc, sd = _official(name, 256)
    vit = cfg.vit
    official = enc.trunk.blocks[index]
    is_window = index in vit.window_block_indexes
    assert official.window_size == (vit.window_size if is_window else 0)
    block = ViTBlock(vit.embed_dim, vit.num_heads, vit.mlp_ratio,
                     window_size=official.window_size, eps=vit.layer_norm_eps)
    params = torch_to_flax(sd, f"image_encoder.trunk.blocks.{index}.")
    x = torch.randn(2, 16, 16, vit.embed_dim, generator=torch.Generator().manual_seed(index))
    with torch.no_grad():
        want = official(x)
    ours = jax.jit(block.apply)({"params": params}, jnp.asarray(_np(x)))
    kind = "window" if is_window else "global"
    _check(capsys, f"{name} block {index} ({kind}, 16x16)", {"block": (ours, want)})


def test_neck_parity(capsys):
    cfg, enc, sd = _official("efficienttam_s", 256)
    x = torch.randn(2, cfg.vit.embed_dim, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats, pos = enc.neck([x])
    params = torch_to_flax(sd, "image_encoder.neck.")
    f, p = jax.jit(ViTDetNeck(cfg).apply)({"params": params}, jnp.asarray(_nhwc(x)))
    _check(capsys, "neck (16x16)", {"features": (f, _nhwc(feats[0])), "pos": (p, _nhwc(pos[0]))})


# ---------------------------------------------------------------------------- whole encoder


@pytest.mark.parametrize(
    "name,image_size",
    [("efficienttam_ti", 256), ("efficienttam_ti", 512), ("efficienttam_s", 256), ("tiny", 128)],
)
def test_image_encoder_parity(capsys, name, image_size):
    cfg, enc, sd = _official(name, image_size)
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = enc(x)
    params = torch_to_flax(sd, "image_encoder.")
    feats, pos = jax.jit(ImageEncoder(cfg).apply)({"params": params}, jnp.asarray(_nhwc(x)))
    side = image_size // cfg.vit.patch_size
    assert feats.shape == pos.shape == (2, side, side, cfg.hidden_dim)
    _check(capsys, f"{name} image encoder @ {image_size}", {
        "vision_features": (feats, _nhwc(out["vision_features"])),
        "vision_pos_enc": (pos, _nhwc(out["vision_pos_enc"][0])),
    })
