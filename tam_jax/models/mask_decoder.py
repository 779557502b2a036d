"""SAM mask decoder: two-way transformer, mask upscaling, hypernetworks, IoU / object-score heads.

Paper: EfficientTAM keeps SAM 2's mask decoder unchanged (spec §4.3 object score, §5.2). Mirrors
`MaskDecoder` in `sam2/modeling/sam/mask_decoder.py` without the high-resolution skips (the
EfficientTAM models have a single-scale neck), in NHWC.

Output tokens are [obj_score_token (if pred_obj_scores), iou_token, mask_tokens (num_multimask + 1)]
followed by the sparse prompt tokens. Mask m's logits are hypernetwork_m(mask token m) . upscaled
image embedding, at 4x the embedding resolution.

Output selection (`multimask_output` is static):
  multimask:  masks 1..3 and their IoUs;
  single, eval, `dynamic_multimask_via_stability`: mask 0 if its stability score
      #(logit > delta) / #(logit > -delta) (1 if the denominator is 0) is >= thresh, else the
      best-IoU mask among 1..3 (per example, with `jnp.where`);
  single otherwise: mask 0.
`sam_tokens_out` is mask tokens 1..3 with multimask and `use_multimask_token_for_obj_ptr`, else
mask token 0 (even when the stability fallback picked another mask, as the official code does).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.models import layers
from tam_jax.models.prompt_encoder import embed
from tam_jax.models.two_way_transformer import TwoWayTransformer


def stability_scores(mask_logits: jax.Array, delta: float) -> jax.Array:
    """(..., H, W) logits -> (...) IoU of the masks thresholded at +delta and -delta."""
    flat = mask_logits.reshape(*mask_logits.shape[:-2], -1)
    area_i = jnp.sum(flat > delta, axis=-1).astype(jnp.float32)
    area_u = jnp.sum(flat > -delta, axis=-1).astype(jnp.float32)
    return jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)


class MaskDecoder(nn.Module):
    """The decoder. See `__call__` for shapes."""

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(
        self,
        image_embeddings_bhwc: jax.Array,
        image_pe_1hwc: jax.Array,
        sparse_bnd: jax.Array,
        dense_bhwc: jax.Array,
        multimask_output: bool,
        repeat_image: bool = False,
        training: bool = False,
        sparse_valid_bn: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Predict masks.

        image_embeddings_bhwc (B_img, h, w, D): image features (memory-conditioned);
        image_pe_1hwc (1, h, w, D): `PromptEncoder.get_dense_pe()`;
        sparse_bnd (B, N, D), dense_bhwc (B, h, w, D): the prompt encoder's outputs;
        multimask_output, repeat_image (each image repeated for B / B_img consecutive prompts;
        the official `repeat_interleave`), training (no stability fallback): static;
        sparse_valid_bn (B, N) bool or None: sparse tokens to keep (False: as if absent).
        Returns a dict:
          masks (B, M, 4h, 4w) low-res logits, iou_pred (B, M) (M = 3 multimask, else 1),
          sam_tokens_out (B, 3 or 1, D), object_score_logits (B, 1),
          all_masks (B, 4, 4h, 4w), all_iou (B, 4) (every mask token, for supervision).
        """
        cfg, md = self.cfg, self.cfg.mask_decoder
        d, dt = cfg.hidden_dim, layers.compute_dtype(cfg.compute_dtype)
        num_mask_tokens = md.num_multimask_outputs + 1
        b = sparse_bnd.shape[0]

        # ---- tokens: [obj_score?, iou, mask_0..mask_3] + sparse prompt
        ids = lambda n: jnp.arange(n)
        parts = []
        if cfg.pred_obj_scores:
            parts.append(embed(1, d, "obj_score_token", dt)(ids(1)))
        parts.append(embed(1, d, "iou_token", dt)(ids(1)))
        parts.append(embed(num_mask_tokens, d, "mask_tokens", dt)(ids(num_mask_tokens)))
        output_tokens = jnp.concatenate(parts, axis=0)  # (T, D)
        s = 1 if cfg.pred_obj_scores else 0
        tokens = jnp.concatenate(
            [jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse_bnd.astype(dt)],
            axis=1)  # (B, T + N, D)

        # ---- image side
        src = image_embeddings_bhwc.astype(dt)
        if repeat_image:
            if b % src.shape[0]:
                raise ValueError(f"{src.shape[0]} images do not divide {b} prompts")
            src = jnp.repeat(src, b // src.shape[0], axis=0)
        elif src.shape[0] != b:
            raise ValueError(f"{src.shape[0]} images for {b} prompts (use repeat_image)")
        src = src + dense_bhwc.astype(dt)
        _, h, w, _ = src.shape
        pos = jnp.broadcast_to(image_pe_1hwc.astype(dt), (b, h, w, d))

        token_valid = None
        if sparse_valid_bn is not None:
            token_valid = jnp.concatenate(
                [jnp.ones((b, output_tokens.shape[0]), bool), sparse_valid_bn.astype(bool)], 1)
        hs, src_bnc = TwoWayTransformer(cfg, name="transformer")(
            src.reshape(b, h * w, d), pos.reshape(b, h * w, d), tokens, token_valid)
        iou_token_out = hs[:, s]  # (B, D)
        mask_tokens_out = hs[:, s + 1:s + 1 + num_mask_tokens]  # (B, 4, D)

        # ---- upscale the image embedding 4x: ConvT -> LN2d -> GELU -> ConvT -> GELU
        x = src_bnc.reshape(b, h, w, d)
        x = layers.conv_transpose(d // 4, 2, 2, "output_upscaling_0", dtype=dt,
                                  impl=cfg.conv_impl)(x)
        x = layers.gelu(layers.layer_norm("output_upscaling_1", 1e-6, dtype=dt)(x))
        x = layers.gelu(layers.conv_transpose(d // 8, 2, 2, "output_upscaling_3", dtype=dt,
                                             impl=cfg.conv_impl)(x))

        hyper_in = jnp.stack([
            layers.MLP(d, d // 8, 3, out_axis=None, name=f"output_hypernetworks_mlps_{i}",
                       dtype=dt)(mask_tokens_out[:, i])
            for i in range(num_mask_tokens)
        ], axis=1)  # (B, 4, D / 8)
        all_masks = layers.einsum("bmc,bhwc->bmhw", hyper_in, x)  # (B, 4, 4h, 4w)

        all_iou = layers.MLP(md.iou_head_hidden_dim, num_mask_tokens, md.iou_head_depth,
                             sigmoid_output=cfg.iou_prediction_use_sigmoid, out_axis=None,
                             name="iou_prediction_head", dtype=dt)(iou_token_out)  # (B, 4)
        if cfg.pred_obj_scores:
            if cfg.pred_obj_scores_mlp:
                head = layers.MLP(d, 1, 3, out_axis=None, name="pred_obj_score_head", dtype=dt)
            else:
                head = layers.dense(1, ("hidden", None), "pred_obj_score_head", dtype=dt)
            object_score_logits = head(hs[:, 0])  # (B, 1)
        else:
            # The official default: object assumed present (sigmoid(10) ~ 1).
            object_score_logits = jnp.full((b, 1), 10.0, all_iou.dtype)

        # ---- output selection
        if multimask_output:
            masks, iou_pred = all_masks[:, 1:], all_iou[:, 1:]
        elif md.dynamic_multimask_via_stability and not training:
            masks, iou_pred = self._dynamic_multimask(all_masks, all_iou)
        else:
            masks, iou_pred = all_masks[:, :1], all_iou[:, :1]
        if multimask_output and cfg.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, :1]
        return dict(masks=masks, iou_pred=iou_pred, sam_tokens_out=sam_tokens_out,
                    object_score_logits=object_score_logits, all_masks=all_masks,
                    all_iou=all_iou)

    def _dynamic_multimask(self, all_masks: jax.Array, all_iou: jax.Array):
        """Mask 0 where it is stable, else the best-IoU multimask output; (B, 1, H, W), (B, 1)."""
        md = self.cfg.mask_decoder
        best = jnp.argmax(all_iou[:, 1:], axis=-1) + 1  # (B,), first max as torch.argmax
        best_mask = jnp.take_along_axis(all_masks, best[:, None, None, None], axis=1)
        best_iou = jnp.take_along_axis(all_iou, best[:, None], axis=1)
        single_mask, single_iou = all_masks[:, :1], all_iou[:, :1]
        stable = stability_scores(single_mask, md.dynamic_multimask_stability_delta) >= (
            md.dynamic_multimask_stability_thresh)  # (B, 1)
        masks = jnp.where(stable[:, :, None, None], single_mask, best_mask)
        return masks, jnp.where(stable, single_iou, best_iou)
