"""The memory attention stack: current-frame tokens attend to the memory bank (paper §3.2).

Mirrors `MemoryAttention` / `MemoryAttentionLayer` of `sam2/modeling/memory_attention.py`
with the official EfficientTAM settings (spec §3): 4 pre-norm layers of d_model 256, each
  x += self_attn(norm1(x))                     RoPE on q and k, no additive PE
  x += cross_attn_image(q=norm2(x), k=memory + memory_pos, v=memory)
                                               RoPE on q and the spatial keys; pooled or full
  x += linear2(dropout(relu(linear1(norm3(x)))))
and a final LayerNorm; the input is `curr + 0.1 * curr_pos`. LayerNorm eps 1e-5. Dropout 0.1
(attention probabilities and the three residual branches) only when `deterministic=False`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.models import layers
from tam_jax.models.attention import PooledMemoryCrossAttention, RoPEAttention


class MemoryAttentionLayer(nn.Module):
    """One layer. tgt (B, HW, d_model); memory, memory_pos (B, M, kv_in_dim) -> (B, HW, d)."""

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, tgt, memory, memory_pos, num_k_exclude_rope: int, key_valid_bm,
                 deterministic: bool, readout_bme=None):
        ma = self.cfg.memory_attention
        ca = ma.cross_attention
        dt = layers.compute_dtype(self.cfg.compute_dtype)
        hw = (self.cfg.feat_size, self.cfg.feat_size)
        drop = lambda x, name: nn.Dropout(ma.dropout, name=name)(x, deterministic=deterministic)

        t2 = layers.layer_norm("norm1", ma.layer_norm_eps, dt)(tgt)
        t2 = RoPEAttention(ma.d_model, ma.num_heads, dropout=ma.dropout, feat_hw=hw,
                           rope_theta=ma.rope_theta, dtype=dt, name="self_attn")(
            t2, t2, t2, deterministic=deterministic)
        tgt = tgt + drop(t2, "dropout1")

        t2 = layers.layer_norm("norm2", ma.layer_norm_eps, dt)(tgt)
        cross = PooledMemoryCrossAttention(
            ma.d_model, ma.num_heads, kv_in_dim=ma.kv_in_dim, dropout=ma.dropout, feat_hw=hw,
            rope_theta=ma.rope_theta, pool_window=ca.pool_window,
            log_area_constant=ca.log_area_constant, pool_pointer_tokens=ca.pool_pointer_tokens,
            dtype=dt, name="cross_attn_image")
        t2 = cross(t2, memory + memory_pos, memory, num_k_exclude_rope=num_k_exclude_rope,
                   key_valid_bm=key_valid_bm, deterministic=deterministic,
                   readout_bme=readout_bme)
        readout = None
        if readout_bme is not None:
            t2, readout = t2
        tgt = tgt + drop(t2, "dropout2")

        t2 = layers.layer_norm("norm3", ma.layer_norm_eps, dt)(tgt)
        t2 = layers.dense(ma.dim_feedforward, ("hidden", "mlp"), "linear1", dtype=dt)(t2)
        t2 = drop(jax.nn.relu(t2), "dropout")
        t2 = layers.dense(ma.d_model, ("mlp", "hidden"), "linear2", dtype=dt)(t2)
        out = tgt + drop(t2, "dropout3")
        return out if readout_bme is None else (out, readout)


class MemoryAttention(nn.Module):
    """The stack (`layers_{i}` + `norm`).

    curr, curr_pos (B, HW, d_model): backbone tokens of the current frame and their sine PE;
    memory, memory_pos (B, M, kv_in_dim): F memory frames x HW tokens, then
    `num_obj_ptr_tokens` object-pointer tokens; key_valid_bm (B, M) bool or None.
    Returns the conditioned tokens (B, HW, d_model) in the compute dtype; with readout_bme
    (B, M, 2): per key, the value to read out (a memory frame's object mask at that token) and
    1 for spatial keys / 0 for pointer tokens, also the readout (L, B, HW): per layer and query
    token, the attention-weighted mask over the spatial keys (the attention mass on pointer
    tokens left out; training's `losses.memory_readout`).
    """

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, curr_bnc, curr_pos_bnc, memory_bmc, memory_pos_bmc,
                 num_obj_ptr_tokens: int = 0, key_valid_bm=None, deterministic: bool = True,
                 readout_bme=None):
        ma = self.cfg.memory_attention
        dt = layers.compute_dtype(self.cfg.compute_dtype)
        if memory_bmc.shape[:2] != memory_pos_bmc.shape[:2]:
            raise ValueError(f"memory {memory_bmc.shape} and memory_pos {memory_pos_bmc.shape}")
        if curr_bnc.shape[0] != memory_bmc.shape[0]:
            raise ValueError("batch size must be the same for curr and memory")
        x = curr_bnc
        if ma.pos_enc_at_input:
            x = x + 0.1 * curr_pos_bnc
        x = x.astype(dt)
        memory, memory_pos = memory_bmc.astype(dt), memory_pos_bmc.astype(dt)
        readouts = []
        for i in range(ma.num_layers):
            x = MemoryAttentionLayer(self.cfg, name=f"layers_{i}")(
                x, memory, memory_pos, num_obj_ptr_tokens, key_valid_bm, deterministic,
                readout_bme)
            if readout_bme is not None:
                x, r = x
                # mass on object tokens / mass on spatial tokens
                readouts.append(r[..., 0] / jnp.maximum(r[..., 1], 1e-6))
        x = layers.layer_norm("norm", ma.layer_norm_eps, dt)(x)
        return x if readout_bme is None else (x, jnp.stack(readouts))
