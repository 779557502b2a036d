"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Paper: EfficientTAM keeps SAM 2's mask decoder unchanged (spec §5.2). Mirrors
`TwoWayTransformer` / `TwoWayAttentionBlock` in `sam2/modeling/sam/transformer.py`.

Each block: token self-attention (block 0 without PE and without residual), token->image
cross-attention, ReLU MLP, image->token cross-attention, each followed by a LayerNorm (eps from
`cfg.mask_decoder.layer_norm_eps`, 1e-5). Cross-attentions work at `embedding_dim /
attention_downsample_rate` internal width. A final token->image attention + LayerNorm closes it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.models import layers

try:  # The shared attention core (q_proj / k_proj / v_proj / out_proj, same maths).
    from tam_jax.models.attention import Attention
except ModuleNotFoundError as e:  # pragma: no cover - only until attention.py lands
    if e.name != "tam_jax.models.attention":
        raise
    Attention = None


class _Attention(nn.Module):
    """`sam/transformer.py::Attention`: project, split heads, softmax(q k^T / sqrt(d)) v, merge.

    q (B, N, embedding_dim), k / v (B, M, kv_in_dim) -> (B, N, embedding_dim). Stand-in with the
    names and interface of `tam_jax.models.attention.Attention`.
    """

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    kv_in_dim: int | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q_bnc: jax.Array, k_bmc: jax.Array, v_bmc: jax.Array) -> jax.Array:
        inner = self.embedding_dim // self.downsample_rate
        if inner % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide {inner}")
        in_axis = "hidden" if self.kv_in_dim is None else "mem"
        q = layers.dense(inner, ("hidden", "mlp"), "q_proj", dtype=self.dtype)(q_bnc)
        k = layers.dense(inner, (in_axis, "mlp"), "k_proj", dtype=self.dtype)(k_bmc)
        v = layers.dense(inner, (in_axis, "mlp"), "v_proj", dtype=self.dtype)(v_bmc)
        split = lambda x: x.reshape(*x.shape[:2], self.num_heads, -1)  # (B, N, H, Dh)
        q, k, v = split(q), split(k), split(v)
        scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
        logits = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(jnp.float32) * scale
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhnm,bmhd->bnhd", probs, v)
        out = out.reshape(*out.shape[:2], inner)  # (B, N, H * Dh)
        return layers.dense(self.embedding_dim, ("mlp", "hidden"), "out_proj",
                            dtype=self.dtype)(out)


def _attention(dim: int, heads: int, downsample_rate: int, name: str, dtype: jnp.dtype):
    cls = Attention if Attention is not None else _Attention
    return cls(dim, heads, downsample_rate=downsample_rate, dtype=dtype, name=name)


class TwoWayAttentionBlock(nn.Module):
    """One block. queries (B, N, D), keys (B, HW, D), their PEs -> (queries, keys)."""

    embedding_dim: int
    num_heads: int
    mlp_dim: int
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe):
        d, h, r, dt = self.embedding_dim, self.num_heads, self.attention_downsample_rate, self.dtype
        ln = lambda name: layers.layer_norm(name, self.eps, dtype=dt)

        # 1. Token self-attention (block 0: no PE, output replaces the queries).
        self_attn = _attention(d, h, 1, "self_attn", dt)
        if self.skip_first_layer_pe:
            queries = self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries)
        queries = ln("norm1")(queries)

        # 2. Tokens attend to the image.
        q, k = queries + query_pe, keys + key_pe
        queries = queries + _attention(d, h, r, "cross_attn_token_to_image", dt)(q, k, keys)
        queries = ln("norm2")(queries)

        # 3. ReLU MLP on the tokens.
        queries = queries + layers.MLP(self.mlp_dim, d, 2, name="mlp", dtype=dt)(queries)
        queries = ln("norm3")(queries)

        # 4. The image attends to the tokens.
        q, k = queries + query_pe, keys + key_pe
        keys = keys + _attention(d, h, r, "cross_attn_image_to_token", dt)(k, q, queries)
        keys = ln("norm4")(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`TwoWayTransformer(depth, embedding_dim, num_heads, mlp_dim)`, token-major (no NCHW).

    image_bnc (B, HW, D), image_pe_bnc (B or 1, HW, D), point_bnc (B, N, D)
    -> (queries (B, N, D), keys (B, HW, D)).
    """

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, image_bnc: jax.Array, image_pe_bnc: jax.Array, point_bnc: jax.Array):
        md = self.cfg.mask_decoder
        d, dt = self.cfg.hidden_dim, layers.compute_dtype(self.cfg.compute_dtype)
        image_pe_bnc = image_pe_bnc.astype(dt)
        point_bnc = point_bnc.astype(dt)
        queries, keys = point_bnc, image_bnc.astype(dt)
        for i in range(md.transformer_depth):
            queries, keys = TwoWayAttentionBlock(
                d, md.transformer_heads, md.transformer_mlp_dim,
                attention_downsample_rate=md.attention_downsample_rate,
                skip_first_layer_pe=(i == 0), eps=md.layer_norm_eps, dtype=dt,
                name=f"layers_{i}",
            )(queries, keys, point_bnc, image_pe_bnc)
        q, k = queries + point_bnc, keys + image_pe_bnc
        queries = queries + _attention(d, md.transformer_heads, md.attention_downsample_rate,
                                       "final_attn_token_to_image", dt)(q, k, keys)
        queries = layers.layer_norm("norm_final_attn", md.layer_norm_eps, dtype=dt)(queries)
        return queries, keys
