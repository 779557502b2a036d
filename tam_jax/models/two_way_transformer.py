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
from tam_jax.models.attention import Attention


def _attention(dim: int, heads: int, downsample_rate: int, name: str, dtype: jnp.dtype):
    return Attention(dim, heads, downsample_rate=downsample_rate, dtype=dtype, name=name)


class TwoWayAttentionBlock(nn.Module):
    """One block. queries (B, N, D), keys (B, HW, D), their PEs, token_valid (B, N) bool or
    None -> (queries, keys)."""

    embedding_dim: int
    num_heads: int
    mlp_dim: int
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe, token_valid=None):
        d, h, r, dt = self.embedding_dim, self.num_heads, self.attention_downsample_rate, self.dtype
        ln = lambda name: layers.layer_norm(name, self.eps, dtype=dt)

        # 1. Token self-attention (block 0: no PE, output replaces the queries).
        self_attn = _attention(d, h, 1, "self_attn", dt)
        if self.skip_first_layer_pe:
            queries = self_attn(queries, queries, queries, key_valid_bm=token_valid)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries, key_valid_bm=token_valid)
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
        keys = keys + _attention(d, h, r, "cross_attn_image_to_token", dt)(
            k, q, queries, key_valid_bm=token_valid)
        keys = ln("norm4")(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`TwoWayTransformer(depth, embedding_dim, num_heads, mlp_dim)`, token-major (no NCHW).

    image_bnc (B, HW, D), image_pe_bnc (B or 1, HW, D), point_bnc (B, N, D), token_valid_bn
    (B, N) bool or None (all valid) -> (queries (B, N, D), keys (B, HW, D)).
    """

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, image_bnc: jax.Array, image_pe_bnc: jax.Array, point_bnc: jax.Array,
                 token_valid_bn: jax.Array | None = None):
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
            )(queries, keys, point_bnc, image_pe_bnc, token_valid_bn)
        q, k = queries + point_bnc, keys + image_pe_bnc
        queries = queries + _attention(d, md.transformer_heads, md.attention_downsample_rate,
                                       "final_attn_token_to_image", dt)(q, k, keys)
        queries = layers.layer_norm("norm_final_attn", md.layer_norm_eps, dtype=dt)(queries)
        return queries, keys
