"""Parity of the memory modules with the official EfficientTAM, and the pooling identities.

Oracle: the official `MemoryAttention` (with `RoPEAttention`, `EfficientRoPEAttention1` or
`EfficientRoPEAttention2` cross-attention) and `MemoryEncoder`, random weights (`randomize_`),
loaded into the Flax modules through the converter. Image size 256 (16 x 16 tokens) keeps it
fast; the maths does not depend on the grid size.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tam_jax.configs import MemoryCrossAttentionConfig, get_config
from tam_jax.convert.checkpoint import official_to_params
from tam_jax.convert.official import build_official_model, randomize_
from tam_jax.models.attention import PooledMemoryCrossAttention, RoPEAttention, attend
from tam_jax.models.memory_attention import MemoryAttention
from tam_jax.models.memory_encoder import MemoryEncoder
from tam_jax.models.position import apply_rope, axial_rope

TOL = 1e-3
SIZE, GRID = 256, 16
HW = GRID * GRID


@functools.lru_cache(maxsize=4)
def _pair(name: str):
    cfg = dataclasses.replace(get_config(name), image_size=SIZE)
    model = build_official_model(cfg, seed=3)
    randomize_(model, seed=3)
    return cfg, model, official_to_params(model.state_dict(), cfg)


def _inputs(frames: int, ptr_tokens: int, batch: int = 2, seed: int = 0):
    rng = np.random.RandomState(seed)
    m = frames * HW + ptr_tokens
    return (rng.normal(size=(batch, HW, 256)).astype(np.float32),
            rng.normal(size=(batch, HW, 256)).astype(np.float32),
            rng.normal(size=(batch, m, 64)).astype(np.float32),
            rng.normal(size=(batch, m, 64)).astype(np.float32))


def _official_attention(model, curr, curr_pos, mem, mem_pos, ptr_tokens):
    seq_first = lambda x: torch.from_numpy(x).transpose(0, 1).contiguous()  # (B, N, C) -> (N, B, C)
    with torch.no_grad():
        out = model.memory_attention(curr=seq_first(curr), memory=seq_first(mem),
                                     curr_pos=seq_first(curr_pos), memory_pos=seq_first(mem_pos),
                                     num_obj_ptr_tokens=ptr_tokens)
    return out.transpose(0, 1).numpy()


def _ours(cfg, params, curr, curr_pos, mem, mem_pos, ptr_tokens, valid=None):
    fn = jax.jit(lambda p, *a, v: MemoryAttention(cfg).apply(
        {"params": p}, *a, num_obj_ptr_tokens=ptr_tokens, key_valid_bm=v))
    args = [jnp.asarray(x) for x in (curr, curr_pos, mem, mem_pos)]
    v = None if valid is None else jnp.asarray(valid)
    return np.asarray(fn(params["memory_attention"], *args, v=v))


def _report(capsys, label, got, want):
    d = float(np.abs(got - want).max())
    with capsys.disabled():
        print(f"\n[memory parity] {label}: max|d| {d:.2e} (scale {np.abs(want).max():.1f})")
    assert got.shape == want.shape
    assert d <= TOL, (label, d)


# ---------------------------------------------------------------------------- memory attention
@pytest.mark.parametrize("name", ["efficienttam_s", "efficienttam_s_1", "efficienttam_s_2"])
@pytest.mark.parametrize("frames,ptr_tokens", [(1, 0), (1, 8), (2, 0), (3, 16)])
def test_memory_attention_matches_official(capsys, name, frames, ptr_tokens):
    cfg, model, params = _pair(name)
    x = _inputs(frames, ptr_tokens)
    want = _official_attention(model, *x, ptr_tokens)
    got = _ours(cfg, params, *x, ptr_tokens)
    _report(capsys, f"{name} frames={frames} pointers={ptr_tokens}", got, want)


@pytest.mark.parametrize("name", ["efficienttam_s", "efficienttam_s_1", "efficienttam_s_2"])
@pytest.mark.parametrize("frames", [2, 7])
def test_cross_attention_alone_matches_official(capsys, name, frames):
    """One layer's `cross_attn_image` on its own (RoPEAttention / eq. 5 / eq. 6), 2 and 7
    memory frames plus 16 pointer tokens; and the RoPE self-attention."""
    cfg, model, params = _pair(name)
    layer_params = params["memory_attention"]["layers_0"]
    q, _, mem, mem_pos = _inputs(frames, 16, seed=9)
    official = model.memory_attention.layers[0]
    with torch.no_grad():
        want = official.cross_attn_image(torch.from_numpy(q), torch.from_numpy(mem + mem_pos),
                                          torch.from_numpy(mem), num_k_exclude_rope=16).numpy()
        want_self = official.self_attn(*(torch.from_numpy(q),) * 3).numpy()
    ma = cfg.memory_attention
    ca = ma.cross_attention
    mod = PooledMemoryCrossAttention(256, 1, kv_in_dim=64, feat_hw=(GRID, GRID),
                                     pool_window=ca.pool_window,
                                     log_area_constant=ca.log_area_constant)
    got = mod.apply({"params": layer_params["cross_attn_image"]}, jnp.asarray(q),
                    jnp.asarray(mem + mem_pos), jnp.asarray(mem), num_k_exclude_rope=16)
    _report(capsys, f"{name} cross_attn_image, {frames} frames + 16 pointer tokens",
            np.asarray(got), want)
    got_self = RoPEAttention(256, 1, feat_hw=(GRID, GRID)).apply(
        {"params": layer_params["self_attn"]}, *(jnp.asarray(q),) * 3)
    _report(capsys, f"{name} self_attn (RoPE)", np.asarray(got_self), want_self)


@pytest.mark.parametrize("name", ["efficienttam_s", "efficienttam_s_1", "efficienttam_s_2"])
@pytest.mark.parametrize("valid_frames", [1, 2])
def test_masked_memory_slots_equal_absent_ones(capsys, name, valid_frames):
    """A static 3-frame / 24-pointer-token bank with masked slots gives exactly what the
    official model gives on only the valid entries (including the 1-frame full-attention rule
    of the pooled variants, decided per batch element)."""
    cfg, model, params = _pair(name)
    curr, curr_pos, mem, mem_pos = _inputs(3, 24, seed=1)
    valid = np.zeros((2, 3 * HW + 24), bool)
    keep_frames = [2, 0][:valid_frames]  # out of order on purpose
    keep_ptr = [3 * HW + i for i in range(8)] + [3 * HW + 16 + i for i in range(4)]
    for f in keep_frames:
        valid[:, f * HW:(f + 1) * HW] = True
    valid[:, keep_ptr] = True
    idx = np.concatenate([np.arange(f * HW, (f + 1) * HW) for f in sorted(keep_frames)]
                         + [np.array(keep_ptr)])
    want = _official_attention(model, curr, curr_pos, mem[:, idx], mem_pos[:, idx], len(keep_ptr))
    got = _ours(cfg, params, curr, curr_pos, mem, mem_pos, 24, valid=valid)
    _report(capsys, f"{name} masked bank, {valid_frames} valid frame(s)", got, want)


def test_mixed_batch_takes_full_or_pooled_attention_per_element(capsys):
    cfg, model, params = _pair("efficienttam_s_1")
    curr, curr_pos, mem, mem_pos = _inputs(2, 0, seed=2)
    valid = np.ones((2, 2 * HW), bool)
    valid[1, HW:] = False  # element 1 has one valid frame -> exact full attention
    got = _ours(cfg, params, curr, curr_pos, mem, mem_pos, 0, valid=valid)
    want0 = _official_attention(model, curr[:1], curr_pos[:1], mem[:1], mem_pos[:1], 0)
    want1 = _official_attention(model, curr[1:], curr_pos[1:], mem[1:, :HW], mem_pos[1:, :HW], 0)
    _report(capsys, "mixed batch", got, np.concatenate([want0, want1]))


def test_dropout_is_active_only_when_not_deterministic():
    cfg = get_config("tiny")
    curr = jnp.ones((1, cfg.feat_size**2, cfg.hidden_dim))
    mem = jax.random.normal(jax.random.PRNGKey(0), (1, 2 * cfg.feat_size**2 + 4, cfg.mem_dim))
    model = MemoryAttention(cfg)
    variables = model.init(jax.random.PRNGKey(1), curr, curr, mem, mem, num_obj_ptr_tokens=4)
    run = lambda det, seed: model.apply(variables, curr, curr, mem, mem, num_obj_ptr_tokens=4,
                                        deterministic=det,
                                        rngs={"dropout": jax.random.PRNGKey(seed)})
    a, b, c = run(True, 0), run(True, 1), run(False, 0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1e-3
    assert float(jnp.abs(c - run(False, 1)).max()) > 1e-3


# ---------------------------------------------------------------------------- pooling identities
def _manual_qkv(params, q_in, k_in, v_in, ptr, heads=1):
    """Projections + RoPE (the part every variant shares), from the module's params."""
    lin = lambda x, p: x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    q, k, v = lin(q_in, params["q_proj"]), lin(k_in, params["k_proj"]), lin(v_in, params["v_proj"])
    cos, sin = axial_rope(GRID, GRID, q.shape[-1], 10000.0)
    q = np.asarray(apply_rope(jnp.asarray(q), cos, sin))
    n_rope = k.shape[1] - ptr
    reps = n_rope // HW
    k_r = np.asarray(apply_rope(jnp.asarray(k[:, :n_rope]), jnp.tile(cos, (reps, 1)),
                                jnp.tile(sin, (reps, 1))))
    k = np.concatenate([k_r, k[:, n_rope:]], axis=1)
    return q[:, None], k[:, None], v[:, None]  # (B, 1, N, D)


def _pool_up(x, frames, p):
    """Average-pool each frame in p x p windows, then nearest-upsample back: (B,1,F*HW,D)."""
    b, _, _, d = x.shape
    g = x.reshape(b, frames, GRID // p, p, GRID // p, p, d).mean(axis=(3, 5), keepdims=True)
    return np.broadcast_to(g, (b, frames, GRID // p, p, GRID // p, p, d)).reshape(b, 1, -1, d)


def _pooled_module(window, constant, pool_pointers=False):
    mod = PooledMemoryCrossAttention(256, 1, kv_in_dim=64, feat_hw=(GRID, GRID),
                                     pool_window=window, log_area_constant=constant,
                                     pool_pointer_tokens=pool_pointers)
    q, _, k, _ = _inputs(3, 16, seed=4)
    params = nn.meta.unbox(mod.init(jax.random.PRNGKey(0), jnp.asarray(q), jnp.asarray(k),
                                    jnp.asarray(k), num_k_exclude_rope=16)["params"])
    return mod, params


@pytest.mark.parametrize("window", [2, 4])
def test_eq5_equals_full_attention_over_pooled_then_upsampled_memory(window):
    """Paper §3.2: with ln(p^2) on the logits, attending to the (F*HW/p^2) pooled tokens is
    exactly attending to all F*HW tokens after replacing each by its window's average."""
    mod, params = _pooled_module(window, "logits")
    q_in, _, mem, _ = _inputs(3, 16, seed=5)
    got = mod.apply({"params": params}, jnp.asarray(q_in), jnp.asarray(mem), jnp.asarray(mem),
                    num_k_exclude_rope=16)
    q, k, v = _manual_qkv(params, q_in, mem, mem, 16)
    n = 3 * HW
    k_full = np.concatenate([_pool_up(k[:, :, :n], 3, window), k[:, :, n:]], axis=2)
    v_full = np.concatenate([_pool_up(v[:, :, :n], 3, window), v[:, :, n:]], axis=2)
    out = attend(jnp.asarray(q), jnp.asarray(k_full), jnp.asarray(v_full))
    want = _out_proj(params, np.asarray(out))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def _out_proj(params, out_bhnd):
    b, h, n, d = out_bhnd.shape
    o = out_bhnd.transpose(0, 2, 1, 3).reshape(b, n, h * d)
    return o @ np.asarray(params["out_proj"]["kernel"]) + np.asarray(params["out_proj"]["bias"])


@pytest.mark.parametrize("constant", ["keys", "none"])
def test_eq6_and_no_constant_with_window_4(constant):
    """Window 4 (beyond the official 2): eq. (6) adds ln 16 to every pooled key component;
    "none" adds nothing. Checked against a hand-written pooled attention."""
    mod, params = _pooled_module(4, constant)
    q_in, _, mem, _ = _inputs(3, 16, seed=6)
    got = mod.apply({"params": params}, jnp.asarray(q_in), jnp.asarray(mem), jnp.asarray(mem),
                    num_k_exclude_rope=16)
    q, k, v = _manual_qkv(params, q_in, mem, mem, 16)
    n = 3 * HW

    def pool(x):
        b, _, _, d = x.shape
        return x[:, :, :n].reshape(b, 3, 4, 4, 4, 4, d).mean(axis=(3, 5)).reshape(b, 1, -1, d)

    add = math.log(16) if constant == "keys" else 0.0
    keys = np.concatenate([pool(k) + add, k[:, :, n:]], axis=2)
    vals = np.concatenate([pool(v), v[:, :, n:]], axis=2)
    want = _out_proj(params, np.asarray(attend(jnp.asarray(q), jnp.asarray(keys),
                                               jnp.asarray(vals))))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_pooling_pointer_tokens_averages_groups_of_window_area():
    mod, params = _pooled_module(2, "logits", pool_pointers=True)
    q_in, _, mem, _ = _inputs(3, 16, seed=7)
    got = mod.apply({"params": params}, jnp.asarray(q_in), jnp.asarray(mem), jnp.asarray(mem),
                    num_k_exclude_rope=16)
    q, k, v = _manual_qkv(params, q_in, mem, mem, 16)
    n = 3 * HW
    # every token (spatial window or 4-token pointer group) replaced by its group mean
    up_ptr = lambda x: np.repeat(x[:, :, n:].reshape(2, 1, 4, 4, -1).mean(axis=3), 4, axis=2)
    k_full = np.concatenate([_pool_up(k[:, :, :n], 3, 2), up_ptr(k)], axis=2)
    v_full = np.concatenate([_pool_up(v[:, :, :n], 3, 2), up_ptr(v)], axis=2)
    want = _out_proj(params, np.asarray(attend(jnp.asarray(q), jnp.asarray(k_full),
                                               jnp.asarray(v_full))))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_config_knobs_reach_the_cross_attention():
    cfg = get_config("tiny")
    base = dataclasses.replace(cfg.memory_attention, cross_attention=MemoryCrossAttentionConfig(
        pool_window=1))
    n = cfg.feat_size**2
    curr = jax.random.normal(jax.random.PRNGKey(0), (1, n, cfg.hidden_dim))
    mem = jax.random.normal(jax.random.PRNGKey(1), (1, 3 * n + 8, cfg.mem_dim))
    outs = {}
    params = None
    for window, const in [(1, "logits"), (2, "logits"), (2, "keys"), (2, "none"), (4, "logits")]:
        c = dataclasses.replace(cfg, memory_attention=dataclasses.replace(
            base, cross_attention=MemoryCrossAttentionConfig(window, const)))
        model = MemoryAttention(c)
        if params is None:
            params = model.init(jax.random.PRNGKey(2), curr, curr, mem, mem,
                                num_obj_ptr_tokens=8)
        outs[(window, const)] = np.asarray(model.apply(params, curr, curr, mem, mem,
                                                       num_obj_ptr_tokens=8))
    keys = list(outs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert np.abs(outs[a] - outs[b]).max() > 1e-4, (a, b)



@pytest.mark.parametrize("constant", ["logits", "keys", "none"])
@pytest.mark.parametrize("pool_pointers", [False, True])
def test_window_1_is_the_unpooled_model_exactly(constant, pool_pointers):
    """Pool window 1 pools nothing whatever the other knobs say: bit-identical to the
    unpooled (official `RoPEAttention`) memory attention, with and without masked slots."""
    cfg = get_config("tiny_full")
    n = cfg.feat_size**2
    curr = jax.random.normal(jax.random.PRNGKey(0), (2, n, cfg.hidden_dim))
    mem = jax.random.normal(jax.random.PRNGKey(1), (2, 3 * n + 16, cfg.mem_dim))
    valid = jnp.ones((2, 3 * n + 16), bool).at[1, n:2 * n].set(False).at[0, -4:].set(False)
    ref_model = MemoryAttention(cfg)
    params = ref_model.init(jax.random.PRNGKey(2), curr, curr, mem, mem, num_obj_ptr_tokens=16)
    knobbed = get_config("tiny_full", **{
        "memory_attention.cross_attention.log_area_constant": constant,
        "memory_attention.cross_attention.pool_pointer_tokens": pool_pointers})
    for key_valid in (None, valid):
        want = ref_model.apply(params, curr, curr, mem, mem, num_obj_ptr_tokens=16,
                               key_valid_bm=key_valid)
        got = MemoryAttention(knobbed).apply(params, curr, curr, mem, mem,
                                             num_obj_ptr_tokens=16, key_valid_bm=key_valid)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---------------------------------------------------------------------------- memory encoder
@pytest.mark.parametrize("skip_sigmoid", [True, False])
def test_memory_encoder_matches_official(capsys, skip_sigmoid):
    cfg, model, params = _pair("efficienttam_s")
    rng = np.random.RandomState(8)
    feats = rng.normal(size=(2, GRID, GRID, 256)).astype(np.float32)
    masks = (rng.normal(size=(2, SIZE, SIZE, 1)) * 8).astype(np.float32)
    with torch.no_grad():
        out = model.memory_encoder(torch.from_numpy(feats).permute(0, 3, 1, 2),
                                   torch.from_numpy(masks).permute(0, 3, 1, 2),
                                   skip_mask_sigmoid=skip_sigmoid)
    got_f, got_p = MemoryEncoder(cfg).apply({"params": params["memory_encoder"]},
                                            jnp.asarray(feats), jnp.asarray(masks),
                                            skip_mask_sigmoid=skip_sigmoid)
    _report(capsys, f"memory encoder features skip_sigmoid={skip_sigmoid}", np.asarray(got_f),
            out["vision_features"].permute(0, 2, 3, 1).numpy())
    _report(capsys, "memory encoder pos", np.asarray(got_p),
            out["vision_pos_enc"][0].permute(0, 2, 3, 1).numpy())


def test_memory_encoder_rejects_a_mask_of_the_wrong_size():
    cfg, _, params = _pair("efficienttam_s")
    with pytest.raises(ValueError, match="does not match features"):
        MemoryEncoder(cfg).apply({"params": params["memory_encoder"]},
                                 jnp.zeros((1, GRID, GRID, 256)), jnp.zeros((1, 128, 128, 1)))
