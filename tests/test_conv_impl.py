"""`conv_impl="matmul"` (slices + matmul) computes what `conv_impl="xla"` (one conv op)
computes, with the same parameters, for every convolution shape the model uses, forward and
gradients; and the whole tiny model gives the same outputs under both."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tam_jax import configs
from tam_jax.models import layers

# (features, kernel, stride, padding, groups, in_channels, spatial): every kind in the model
CASES = {
    "patch_embed 16/16": (8, 16, 16, 0, 1, 3, 32),
    "1x1": (6, 1, 1, 0, 1, 5, 7),
    "neck 3x3 pad 1": (6, 3, 1, 1, 1, 5, 7),
    "mask downsampler 3x3 s2 p1": (16, 3, 2, 1, 1, 4, 16),
    "odd size 3x3 s2 p1": (4, 3, 2, 1, 1, 1, 9),
    "prompt 2x2 s2": (4, 2, 2, 0, 1, 1, 8),
    "mask_downsample 4x4 s4": (1, 4, 4, 0, 1, 1, 16),
    "depthwise 7x7 pad 3": (6, 7, 1, 3, 6, 6, 8),
}


def _apply(impl, case, x, params=None):
    f, k, s, p, g, _, _ = case
    mod = layers.conv(f, k, "c", stride=s, padding=p, groups=g, impl=impl)
    if params is None:
        params = mod.init(jax.random.key(0), x)
    return mod, params


@pytest.mark.parametrize("name", list(CASES))
def test_conv_matmul_equals_xla(name):
    case = CASES[name]
    cin, size = case[5], case[6]
    x = jax.random.normal(jax.random.key(1), (2, size, size, cin))
    xla, params = _apply("xla", case, x)
    mat, params_m = _apply("matmul", case, x)
    # same parameter tree and the same initial values (same names, shapes, initialisers)
    assert jax.tree.structure(params) == jax.tree.structure(params_m)
    jax.tree.map(np.testing.assert_array_equal, params, params_m)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                          params)  # a non-zero bias too
    np.testing.assert_allclose(mat.apply(params, x), xla.apply(params, x), atol=2e-5, rtol=1e-5)

    def loss(m):
        return lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))

    gx = jax.grad(loss(xla), argnums=(0, 1))(params, x)
    gm = jax.grad(loss(mat), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4), gm, gx)


def test_conv_transpose_matmul_equals_xla():
    x = jax.random.normal(jax.random.key(3), (2, 5, 6, 8))
    xla = layers.conv_transpose(4, 2, 2, "t", impl="xla")
    mat = layers.conv_transpose(4, 2, 2, "t", impl="matmul")
    params = xla.init(jax.random.key(0), x)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(4), a.shape),
                          params)
    assert jax.tree.structure(params) == jax.tree.structure(mat.init(jax.random.key(0), x))
    np.testing.assert_allclose(mat.apply(params, x), xla.apply(params, x), atol=2e-5, rtol=1e-5)
    x5 = x.reshape(1, 2, 5, 6, 8)  # leading batch dims are kept
    assert mat.apply(params, x5).shape == (1, 2, 10, 12, 4)


def test_unsupported_groups_is_a_clear_error():
    mod = layers.conv(8, 3, "grouped", padding=1, groups=2, impl="matmul")
    with pytest.raises(NotImplementedError, match="grouped"):
        mod.init(jax.random.key(0), jnp.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="conv_impl"):
        configs.get_config("tiny", conv_impl="cudnn")


def test_tiny_model_outputs_match_between_impls():
    from tam_jax.models.tam import EfficientTAM, init_params

    cfg = configs.get_config("tiny")
    params = init_params(cfg, 0)
    images = jax.random.uniform(jax.random.key(5), (2, 128, 128, 3))
    out = {}
    for impl in ("xla", "matmul"):
        model = EfficientTAM(dataclasses.replace(cfg, conv_impl=impl))
        feats, pos = model.apply({"params": params}, images,
                                 method=lambda m, x: m.image_encoder(x))
        mask = jax.random.normal(jax.random.key(6), (2, 128, 128, 1))
        mem, _ = model.apply({"params": params}, feats, mask,
                             method=lambda m, f, k: m.memory_encoder(f, k))
        out[impl] = (feats, mem)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
                 out["matmul"], out["xla"])
