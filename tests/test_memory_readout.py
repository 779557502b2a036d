"""The memory-readout loss (`losses.memory_readout`, off by default, not SAM 2's): the bank's
extra channel travels with its frame through `assemble`, the readout is the attention the
output uses (the output itself unchanged), and the clip loss adds exactly weight x term.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tam_jax import configs
from tam_jax.memory import assemble, assemble_with_extra, empty_bank, write_frame
from tam_jax.models.attention import PooledMemoryCrossAttention
from tam_jax.models.tam import init_params
from tam_jax.training import clip_forward, losses, prompts

CFG = configs.get_config("tiny")


def _banks():
    """The same writes into a plain bank and into one with an extra channel holding frame + 1:
    3 objects, cond frame 0 for all, recent frames 1 and 2 for some, cond frame 3 for one."""
    rng = np.random.default_rng(0)
    h, c, d = CFG.feat_size, CFG.mem_dim, CFG.hidden_dim
    plain, extra = empty_bank(CFG, 3), empty_bank(CFG, 3, extra_channels=1)
    for f, cond, who in ((0, True, None), (1, False, [1, 0, 0]), (2, False, [1, 1, 0]),
                         (3, True, [0, 0, 1])):
        feats = jnp.asarray(rng.normal(size=(3, h, h, c)), jnp.float32)
        ptr = jnp.asarray(rng.normal(size=(3, d)), jnp.float32)
        mask = None if who is None else jnp.asarray(who, bool)
        tagged = jnp.concatenate([feats, jnp.full((3, h, h, 1), f + 1.0)], -1)
        plain = write_frame(plain, f, feats, ptr, is_cond=cond, write_mask_b=mask)
        extra = write_frame(extra, f, tagged, ptr, is_cond=cond, write_mask_b=mask)
    return plain, extra


@pytest.mark.parametrize("max_frames", [None, 3])
def test_extra_channel_follows_its_frame_and_leaves_the_memory_alone(max_frames):
    plain, extra = _banks()
    tpos = jnp.asarray(np.random.default_rng(1).normal(size=(CFG.num_maskmem, 1, 1, CFG.mem_dim)),
                       jnp.float32)
    want = assemble(CFG, plain, tpos, 4, 8, reverse=False, max_frames=max_frames)
    mem, pos, valid, n_ptr, ex = assemble_with_extra(CFG, extra, tpos, 4, 8, reverse=False,
                                                     max_frames=max_frames)
    for a, b in zip((mem, pos, valid), want[:3], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert n_ptr == want[3] and ex.shape == mem.shape[:2] + (2,)
    assert assemble_with_extra(CFG, plain, tpos, 4, 8, reverse=False)[4] is None
    hw = CFG.feat_size ** 2
    n_sp = mem.shape[1] - n_ptr
    ex, valid = np.asarray(ex), np.asarray(valid)
    np.testing.assert_array_equal(ex[:, n_sp:], 0.0)  # pointer tokens: no mask, not spatial
    np.testing.assert_array_equal(ex[:, :n_sp, 1], 1.0)
    # each valid spatial key carries the tag of the frame it came from: frames 0 (cond),
    # then the recent frames the object holds, in bank order (cond slots, then recent)
    frames_per_object = [[1, 2, 3], [1, 3], [1, 4]]
    for b, tags in enumerate(frames_per_object):
        got = ex[b, :n_sp, 0][valid[b, :n_sp]].reshape(-1, hw)
        np.testing.assert_array_equal(got[:, 0], sorted(tags, key=lambda t: t not in (1, 4)))
        assert (got == got[:, :1]).all()


def _identity_attention(pool_window: int):
    """A cross-attention whose value path copies key-input channel 0 into dim 0 of every head
    and whose output projection is the identity: its output channel h * Dh is then head h's
    attention-weighted channel 0, the quantity the readout must equal."""
    d, heads, kv, hw = 32, 2, 8, (4, 4)
    mod = PooledMemoryCrossAttention(d, heads, kv_in_dim=kv, feat_hw=hw, pool_window=pool_window,
                                     rope_theta=10000.0, pool_pointer_tokens=True)
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(2, 16, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 3 * 16 + 4, kv)), jnp.float32)
    params = mod.init(jax.random.key(0), q, k, k, num_k_exclude_rope=4)["params"]
    v_kernel = np.zeros((kv, d), np.float32)
    v_kernel[0, 0::d // heads] = 1.0  # input channel 0 -> dim 0 of each head
    params = jax.tree.map(lambda x: x, params)
    params["v_proj"] = {"kernel": jnp.asarray(v_kernel), "bias": jnp.zeros((d,))}
    params["out_proj"] = {"kernel": jnp.eye(d), "bias": jnp.zeros((d,))}
    valid = np.ones((2, k.shape[1]), bool)
    valid[1, 16:32] = False  # one element with a masked memory frame
    valid[0, -1] = False  # and a masked pointer token
    return mod, params, q, k, jnp.asarray(valid), d // heads, heads


@pytest.mark.parametrize("pool_window", [1, 2])
def test_readout_is_the_attention_the_output_uses(pool_window):
    mod, params, q, k, valid, dh, heads = _identity_attention(pool_window)
    run = functools.partial(mod.apply, {"params": params}, q, k, k, num_k_exclude_rope=4,
                            key_valid_bm=valid)
    plain = run()
    out, readout = run(readout_bme=k[..., :1])
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-6, atol=1e-6)
    want = np.mean(np.asarray(plain)[..., 0::dh], axis=-1)  # mean over heads of dim 0
    assert readout.shape == (2, 16, 1)
    np.testing.assert_allclose(np.asarray(readout[..., 0]), want, rtol=1e-5, atol=1e-6)


def test_memory_readout_loss_by_hand():
    r = jnp.asarray([[[0.9, 0.2], [0.5, 0.5]]])  # (L=1, N=2, HW=2)
    t = jnp.asarray([[1.0, 0.0], [1.0, 1.0]])
    got = losses.memory_readout(r, t, jnp.asarray([True, False]), 2)
    want = -(np.log(0.9) + np.log(0.8)) / 2 / 2  # object 1 is padding; 2 objects normalise
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


MICRO = {"vit.depth": 2, "vit.global_att_blocks": (1,), "memory_attention.num_layers": 1,
         "mask_decoder.transformer_depth": 1, "memory_encoder.fuser_layers": 1}


def test_clip_loss_adds_weight_times_readout_and_trains_the_match():
    cfg = configs.for_training(configs.override(CFG, MICRO))
    params = init_params(cfg, 0)
    s = cfg.image_size
    rng = np.random.default_rng(0)
    images = rng.normal(size=(1, 3, s, s, 3)).astype(np.float32)
    masks = np.zeros((1, 3, 2, s, s), bool)
    for f in range(3):
        masks[0, f, 0, 20 + 8 * f:80 + 8 * f, 30:90] = True
        masks[0, f, 1, 150:200, 100 + 10 * f:160 + 10 * f] = True
    batch = {"images": jnp.asarray(images), "masks": jnp.asarray(masks),
             "obj_valid": jnp.ones((1, 2), bool)}
    kind = prompts.PlanKind(False, ("mask",), 0)
    order, corrected = jnp.arange(3, dtype=jnp.int32), jnp.zeros(3, bool)

    def loss(p, weight):
        return clip_forward.clip_loss(
            cfg, p, batch, kind, order, corrected, jax.random.key(0), 2,
            loss_cfg=losses.LossConfig(weight_memory_readout=weight), deterministic=True)

    off, aux_off = jax.jit(functools.partial(loss, weight=0.0))(params)
    on, aux_on = jax.jit(functools.partial(loss, weight=2.0))(params)
    assert float(aux_off["loss_readout"]) == 0.0
    term = float(aux_on["loss_readout"])
    assert np.isfinite(term) and term > 0
    np.testing.assert_allclose(float(on), float(off) + 2.0 * term, rtol=1e-5)
    # the term's gradient reaches the cross-attention's queries and keys
    grads = jax.jit(jax.grad(lambda p: loss(p, 1.0)[1]["loss_readout"]))(params)
    cross = grads["memory_attention"]["layers_0"]["cross_attn_image"]
    for name in ("q_proj", "k_proj"):
        assert float(jnp.abs(cross[name]["kernel"]).max()) > 0, name
