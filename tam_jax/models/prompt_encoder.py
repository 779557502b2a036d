"""SAM prompt encoder: points / box corners -> sparse tokens, mask logits -> dense embedding.

Paper: EfficientTAM reuses SAM 2's prompt encoder unchanged (spec §5.1). Mirrors
`sam2/modeling/sam/prompt_encoder.py` (`PromptEncoder`), in NHWC.

Prompts have static shapes: a prompt is a padded point set, `points_bn2` (B, N, 2) in model-input
pixels (x, y), 0..image_size, and `labels_bn` (B, N) with
    -1 padding (token replaced by `not_a_point_embed`; its position encoding is dropped)
     0 / 1 negative / positive click,  2 / 3 box top-left / bottom-right corner.
The official model passes boxes as two points labelled 2, 3 before the clicks and always calls the
encoder without a box, so one padding point is appended (`pad=True`, the default here). A box given
to the official encoder as `boxes=` equals its two corners with labels 2, 3 and `pad=False`.
Mask prompts are (B, 4h, 4w, 1) logits; without one, `no_mask_embed` is broadcast over (h, w).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.models import layers
from tam_jax.models.position import PositionEmbeddingRandom

# torch.nn.Embedding initialises N(0, 1); SAM's prompt / output tokens train from that scale.
_EMBED_INIT = nn.initializers.normal(stddev=1.0)


def embed(num: int, features: int, name: str, dtype: jnp.dtype = jnp.float32) -> nn.Embed:
    """`nn.Embedding(num, features)` as Flax `nn.Embed` (param `embedding`, (num, features))."""
    return nn.Embed(
        num, features, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, (None, "hidden")), name=name,
    )


class PromptEncoder(nn.Module):
    """`PromptEncoder(embed_dim=hidden_dim, image_embedding_size=(h, w), input_image_size=S)`.

    Methods:
      __call__(points_bn2, labels_bn, masks_bhw1=None, pad=True, batch_size=None)
          -> sparse (B, N [+1 if pad], D), dense (B, h, w, D)
      get_dense_pe() -> (1, h, w, D): the random-Fourier PE of the image grid cell centres.
    """

    cfg: EfficientTAMConfig

    def setup(self):
        cfg = self.cfg
        dt = layers.compute_dtype(cfg.compute_dtype)
        d, c = cfg.hidden_dim, cfg.mask_decoder.mask_in_chans
        self.pe_layer = PositionEmbeddingRandom(d // 2)
        self.point_embeddings = [embed(1, d, f"point_embeddings_{i}", dt) for i in range(4)]
        self.not_a_point_embed = embed(1, d, "not_a_point_embed", dt)
        self.no_mask_embed = embed(1, d, "no_mask_embed", dt)
        # Conv(1->c/4, k2 s2), LN2d, GELU, Conv(c/4->c, k2 s2), LN2d, GELU, Conv(c->d, 1)
        self.mask_downscaling_0 = layers.conv(c // 4, 2, "mask_downscaling_0", stride=2, dtype=dt,
                                              impl=cfg.conv_impl)
        self.mask_downscaling_1 = layers.layer_norm("mask_downscaling_1", 1e-6, dtype=dt)
        self.mask_downscaling_3 = layers.conv(c, 2, "mask_downscaling_3", stride=2, dtype=dt,
                                              impl=cfg.conv_impl)
        self.mask_downscaling_4 = layers.layer_norm("mask_downscaling_4", 1e-6, dtype=dt)
        self.mask_downscaling_6 = layers.conv(d, 1, "mask_downscaling_6", dtype=dt,
                                              impl=cfg.conv_impl)

    @property
    def _dtype(self) -> jnp.dtype:
        return layers.compute_dtype(self.cfg.compute_dtype)

    def get_dense_pe(self) -> jax.Array:
        """(1, h, w, D) float32 PE of the image-embedding grid (official `get_dense_pe`)."""
        h = w = self.cfg.feat_size
        return self.pe_layer.dense_pe(h, w)[None]

    def _embed_points(self, points_bn2: jax.Array, labels_bn: jax.Array, pad: bool) -> jax.Array:
        size = float(self.cfg.image_size)
        points = points_bn2.astype(jnp.float32) + 0.5  # to pixel centres
        if pad:
            b = points.shape[0]
            points = jnp.concatenate([points, jnp.zeros((b, 1, 2), jnp.float32)], axis=1)
            labels_bn = jnp.concatenate(
                [labels_bn, -jnp.ones((b, 1), labels_bn.dtype)], axis=1)
        # (x / W, y / H); the official divides, so do we (bitwise-closest).
        pe = self.pe_layer.encode_coords(points / jnp.array([size, size], jnp.float32))  # (B,N,D)
        labels = labels_bn[..., None]  # (B, N, 1)
        out = pe
        for k in range(4):
            out = jnp.where(labels == k, pe + self._weight(self.point_embeddings[k]), out)
        # Padding: the PE is dropped and the token is exactly `not_a_point_embed`.
        out = jnp.where(labels == -1, self._weight(self.not_a_point_embed), out)
        return out.astype(self._dtype)

    @staticmethod
    def _weight(emb: nn.Embed) -> jax.Array:
        return emb.embedding[0].astype(jnp.float32)  # (D,)

    def _embed_masks(self, masks_bhw1: jax.Array) -> jax.Array:
        x = masks_bhw1.astype(self._dtype)
        x = layers.gelu(self.mask_downscaling_1(self.mask_downscaling_0(x)))
        x = layers.gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
        return self.mask_downscaling_6(x)  # (B, h, w, D)

    def __call__(
        self,
        points_bn2: jax.Array | None,
        labels_bn: jax.Array | None,
        masks_bhw1: jax.Array | None = None,
        pad: bool = True,
        batch_size: int | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Embed a prompt.

        points_bn2 (B, N, 2) float pixels (x, y) in the model-input frame, labels_bn (B, N) int;
        both None for no sparse prompt (then sparse is (B, 0, D)). masks_bhw1 (B, 4h, 4w, 1)
        logits or None. `pad` (static) appends one padding point, as the official encoder does
        whenever no `boxes=` are given. `batch_size` is used when neither points nor masks are.
        Returns sparse (B, N', D) and dense (B, h, w, D) in the compute dtype.
        """
        cfg = self.cfg
        d, h = cfg.hidden_dim, cfg.feat_size
        if (points_bn2 is None) != (labels_bn is None):
            raise ValueError("points_bn2 and labels_bn must be given together")
        if points_bn2 is not None:
            b = points_bn2.shape[0]
        elif masks_bhw1 is not None:
            b = masks_bhw1.shape[0]
        else:
            b = batch_size or 1
        if masks_bhw1 is not None and masks_bhw1.shape[1:] != (4 * h, 4 * h, 1):
            raise ValueError(
                f"mask prompt must be (B, {4 * h}, {4 * h}, 1), got {tuple(masks_bhw1.shape)}")

        if points_bn2 is not None:
            sparse = self._embed_points(points_bn2, labels_bn, pad)
        else:
            sparse = jnp.zeros((b, 0, d), self._dtype)

        if self.is_initializing():
            # Create every parameter whatever the prompt used for `init`.
            _ = self._embed_points(jnp.zeros((1, 1, 2)), jnp.zeros((1, 1), jnp.int32), True)
            _ = self._embed_masks(jnp.zeros((1, 4 * h, 4 * h, 1), self._dtype))
            _ = self.no_mask_embed.embedding
        if masks_bhw1 is not None:
            dense = self._embed_masks(masks_bhw1)
        else:
            no_mask = self.no_mask_embed.embedding[0].astype(self._dtype)
            dense = jnp.broadcast_to(no_mask, (b, h, h, d))
        return sparse, dense
