"""`EfficientTAMConfig.matmul_precision`: "bfloat16" rounds the operands of every model matmul
and convolution to bf16 (float32 accumulation and results), "float32" leaves them alone; the
config reaches every matmul of a tracked frame; the two precisions never share a trace; and
bf16 tracking stays close to float32 tracking."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_video_predictor import _video  # 64 x 80 frames: a moving disc and a moving square

from tam_jax import flops
from tam_jax.configs import get_config
from tam_jax.models import layers
from tam_jax.models.tam import init_params
from tam_jax.video_predictor import VideoPredictor


def _dots(jaxpr, skip_resizes=False):
    """Every dot_general / conv_general_dilated equation of a jaxpr, through sub-jaxprs; with
    `skip_resizes`, not those inside `jax.image.resize` (a jit named "_resize")."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            yield eqn
        if skip_resizes and eqn.params.get("name") == "_resize":
            continue
        for value in eqn.params.values():
            for sub in flops._sub_jaxprs(value):
                yield from _dots(sub, skip_resizes)


def _flops(eqn) -> int:
    return flops.dot_flops(eqn) if eqn.primitive.name == "dot_general" else flops.conv_flops(eqn)


def _flop_share_by_operand_dtype(closed, skip_resizes=False) -> dict:
    share = {}
    for eqn in _dots(closed.jaxpr, skip_resizes):
        key = "/".join(str(v.aval.dtype) for v in eqn.invars[:2]) + "->" + str(
            eqn.outvars[0].aval.dtype)
        share[key] = share.get(key, 0) + _flops(eqn)
    total = sum(share.values())
    return {k: v / total for k, v in share.items()}


def test_dense_einsum_and_conv_round_operands_only_under_bfloat16():
    x = jax.random.normal(jax.random.key(0), (3, 5, 24))
    dense = layers.dense(16, ("hidden", "mlp"), "d")
    params = dense.init(jax.random.key(1), x)
    kernel = params["params"]["kernel"].value
    rounded = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32))
    for name, operand_dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        with layers.matmul_precision(name):
            closed = jax.make_jaxpr(dense.apply)(params, x)
            y = dense.apply(params, x)
            e = layers.einsum("bnc,cd->bnd", x, kernel)
            conv = layers.conv(4, 3, "c", padding=1, impl="xla")
            img = x[..., :8].reshape(3, 5, 8, 1)
            conv_y = conv.apply(conv.init(jax.random.key(2), img), img)
        (eqn,) = list(_dots(closed.jaxpr))
        assert [v.aval.dtype for v in eqn.invars] == [operand_dtype, operand_dtype]
        assert y.dtype == e.dtype == conv_y.dtype == jnp.float32  # results stay float32
        xs, ks = (rounded(x), rounded(kernel)) if name == "bfloat16" else (x, kernel)
        want = np.einsum("bnc,cd->bnd", np.asarray(xs, np.float64), np.asarray(ks, np.float64))
        np.testing.assert_allclose(e, want, atol=2e-5, rtol=1e-5)
    assert layers._matmul_precision == "float32"  # the context restores what it found


def test_bad_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="matmul_precision"):
        get_config("tiny", matmul_precision="float16")
    with pytest.raises(ValueError, match="matmul_precision"):
        with layers.matmul_precision("fp8"):
            pass
    with pytest.raises(RuntimeError):
        with layers.matmul_precision("bfloat16"):
            raise RuntimeError("inside")
    assert layers._matmul_precision == "float32"


def test_gradients_flow_in_float32_under_bfloat16():
    x = jax.random.normal(jax.random.key(0), (4, 8))
    dense = layers.dense(3, ("hidden", "mlp"), "d")
    params = dense.init(jax.random.key(1), x)

    def loss(p):
        with layers.matmul_precision("bfloat16"):
            return jnp.sum(jnp.tanh(dense.apply(p, x)))

    grads = jax.grad(loss)(params)
    g = grads["params"]["kernel"].value
    assert g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all() and np.abs(g).sum() > 0


def _track(cfg, params, video):
    """Masks of two objects tracked over the video, and the jaxprs of the last frame's two
    jitted calls (image encoder, track step with a full memory)."""
    p = VideoPredictor(cfg, params, progress=False)
    seen = {}
    for name in ("_encode_frame", "_track_frame"):
        real = getattr(p, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name] = (_real, jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x,
                args), kwargs)
            return _real(*args, **kwargs)
        setattr(p, name, spy)
    s = p.init_state(video)
    p.add_new_points_or_box(s, 0, "a", points=[[20, 30]], labels=[1])
    p.add_new_points_or_box(s, 0, "b", box=[52, 12, 68, 28])
    masks = np.stack([m for _, _, m in p.propagate_in_video(s)])
    jaxprs = {name: jax.make_jaxpr(functools.partial(real, **kw))(*args)
              for name, (real, args, kw) in seen.items()}
    return masks, jaxprs


@pytest.fixture(scope="module")
def tracked():
    cfg = get_config("tiny", image_size=128, num_maskmem=3)
    params = init_params(cfg, 3)
    video = _video(8)
    return {mp: _track(dataclasses.replace(cfg, matmul_precision=mp), params, video)
            for mp in ("float32", "bfloat16")}


def test_every_tracking_matmul_follows_the_config(tracked):
    for name in ("_encode_frame", "_track_frame"):
        f32 = _flop_share_by_operand_dtype(tracked["float32"][1][name])
        assert f32 == {"float32/float32->float32": 1.0}, (name, f32)
        # What stays float32: the bilinear resizes of mask logits (`jax.image.resize`, data
        # resampling outside the model's layers, left out here: 6 % of this tiny model's
        # FLOPs, < 1 % at 512), and the random-Fourier PE of the clicks / grid and the ViT's
        # position-embedding resize (tiny matmuls, the PE's feeding sin / cos, where bf16
        # would shift the phase): under 1 % of what is left.
        bf16 = _flop_share_by_operand_dtype(tracked["bfloat16"][1][name], skip_resizes=True)
        assert bf16.get("bfloat16/bfloat16->float32", 0) > 0.99, (name, bf16)


def test_xla_convolutions_follow_the_config():
    """The predictor compiles convolutions as matmuls on CPU; TPUs keep conv ops: those too."""
    from tam_jax.models.tam import EfficientTAM

    cfg = get_config("tiny", conv_impl="xla", matmul_precision="bfloat16")
    model = EfficientTAM(cfg)
    params = init_params(cfg, 0)
    size = cfg.image_size

    def encode(p, x, m):
        feats, _ = model.apply({"params": p}, x, method=EfficientTAM.encode_image)
        return model.apply({"params": p}, feats, m, method=EfficientTAM.encode_memory)

    closed = jax.make_jaxpr(encode)(params, jnp.zeros((1, size, size, 3)),
                                    jnp.zeros((1, size, size, 1)))
    assert any(e.primitive.name == "conv_general_dilated" for e in _dots(closed.jaxpr))
    share = _flop_share_by_operand_dtype(closed)
    assert share.get("bfloat16/bfloat16->float32", 0) > 0.999, share


def test_bfloat16_tracking_is_close_to_float32(tracked):
    a, b = tracked["float32"][0], tracked["bfloat16"][0]
    assert a.shape == b.shape == (8, 2, 1, 64, 80)
    assert not np.array_equal(a, b)  # really computed at the other precision (no shared trace)
    agree = ((a > 0) == (b > 0)).mean()
    rel = np.abs(a - b).max() / np.abs(a).max()
    print(f"bf16 vs float32 tracking: masks agree on {agree:.5f} of pixels, "
          f"max |diff| / max |logit| = {rel:.4f}")
    assert agree >= 0.99
    assert rel <= 0.05
