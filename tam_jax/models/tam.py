"""EfficientTAM assembled: image encoder, memory modules, SAM heads, object pointer.

Mirrors `SAM2Base` / `EfficientTAMBase` (`efficienttam_base.py`; spec §2-§6). Submodule and
parameter names are the official attribute names, so `convert/key_table.py` maps all 455
official keys onto this module's params.

Layout is NHWC throughout: features (B, h, w, 256) with h = w = image_size / 16; masks
(B, M, H, W) of logits; point coordinates in model-input pixels (0..image_size), (x, y).
The video memory (memory bank, `track_step`) builds on the methods here.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.models import layers
from tam_jax.models.attention import batch_looping
from tam_jax.models.mask_decoder import MaskDecoder
from tam_jax.models.memory_attention import MemoryAttention
from tam_jax.models.memory_encoder import MemoryEncoder
from tam_jax.models.prompt_encoder import PromptEncoder
from tam_jax.models.vit import ImageEncoder

# Logit given to every pixel of a frame where the object is judged absent (spec §4.3).
NO_OBJ_SCORE = -1024.0


def resize_bilinear(x_bhwc: jax.Array, h: int, w: int, antialias: bool = False) -> jax.Array:
    """`F.interpolate(mode="bilinear", align_corners=False[, antialias])` on NHWC tensors."""
    if x_bhwc.shape[1:3] == (h, w):
        return x_bhwc
    return jax.image.resize(
        x_bhwc.astype(jnp.float32), (x_bhwc.shape[0], h, w, x_bhwc.shape[3]), "linear",
        antialias=antialias,
    )


def _at_config_precision(method):
    """Run a model method with its matmuls traced at `cfg.matmul_precision` (`layers` doc) and
    its attention batch-looped as `cfg.attention_batch_loop` says (`attention.batch_looping`).

    Every entry point of the model carries this, so whatever jits a method (keyed on the
    config, which holds both) traces it with the config's settings."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with layers.matmul_precision(self.cfg.matmul_precision), \
                batch_looping(self.cfg.attention_batch_loop):
            return method(self, *args, **kwargs)
    return run


class EfficientTAM(nn.Module):
    """The whole model. Call methods with `model.apply(variables, ..., method=...)`."""

    cfg: EfficientTAMConfig

    def setup(self):
        cfg = self.cfg
        dt = layers.compute_dtype(cfg.compute_dtype)
        self.image_encoder = ImageEncoder(cfg)
        self.memory_attention = MemoryAttention(cfg)
        self.memory_encoder = MemoryEncoder(cfg)
        self.sam_prompt_encoder = PromptEncoder(cfg)
        self.sam_mask_decoder = MaskDecoder(cfg)
        d, m = cfg.hidden_dim, cfg.mem_dim
        if cfg.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = layers.MLP(d, d, 3, dtype=dt)
        else:
            self.obj_ptr_proj = layers.dense(d, ("hidden", "hidden"), "obj_ptr_proj", dtype=dt)
        # Turns a mask prompt (model-input size, 0/1) into SAM-scale logits at 1/4 resolution,
        # for the pointer of mask-input frames (spec §4.3).
        self.mask_downsample = layers.conv(1, 4, "mask_downsample", stride=4, dtype=dt,
                                           impl=cfg.conv_impl)
        trunc = nn.initializers.truncated_normal(0.02)
        self.maskmem_tpos_enc = self.param(
            "maskmem_tpos_enc", nn.with_logical_partitioning(trunc, (None, None, None, "mem")),
            (cfg.num_maskmem, 1, 1, m), jnp.float32)
        self.no_mem_embed = self.param(
            "no_mem_embed", nn.with_logical_partitioning(trunc, (None, None, "hidden")),
            (1, 1, d), jnp.float32)
        self.no_mem_pos_enc = self.param(
            "no_mem_pos_enc", nn.with_logical_partitioning(trunc, (None, None, "hidden")),
            (1, 1, d), jnp.float32)
        self.no_obj_ptr = self.param(
            "no_obj_ptr", nn.with_logical_partitioning(trunc, (None, "hidden")), (1, d),
            jnp.float32)

    # ------------------------------------------------------------------ image encoder
    @_at_config_precision
    def encode_image(self, images_bhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Normalised images (B, S, S, 3) -> backbone features and their sine PE, (B, h, w, 256).

        The features are raw (no `no_mem_embed`): the memory encoder needs them so.
        """
        return self.image_encoder(images_bhwc)

    # ------------------------------------------------------------------ SAM heads
    @_at_config_precision
    def prompt_and_decode(
        self,
        features_bhwc: jax.Array,
        point_coords: jax.Array | None,
        point_labels: jax.Array | None,
        mask_inputs: jax.Array | None,
        multimask_output: bool,
        pad_points: bool = True,
        point_valid: jax.Array | None = None,
    ) -> dict:
        """Prompt encoder + mask decoder on already memory-conditioned features.

        point_coords (B, N, 2) in model-input pixels, point_labels (B, N) int (-1 pad, 0/1 click,
        2/3 box corners) or None for no sparse prompt; mask_inputs (B, 4h, 4w, 1) logits or None.
        point_valid (B, N) bool or None: points to keep; a False point is absent from the
        decoder's attention (a fixed-size click buffer's unused slots), exactly.
        Returns the mask decoder's dict (low-res `masks` (B, M, 4h, 4w), `iou_pred` (B, M),
        `sam_tokens_out`, `object_score_logits` (B, 1), `all_masks`, `all_iou`).
        """
        sparse, dense = self.sam_prompt_encoder(
            point_coords, point_labels, mask_inputs, pad=pad_points,
            batch_size=features_bhwc.shape[0],
        )
        sparse_valid = None
        if point_valid is not None:
            if point_coords is None:
                raise ValueError("point_valid needs point_coords")
            sparse_valid = point_valid.astype(bool)
            if pad_points:  # the appended padding token is always there, as officially
                pad = jnp.ones((sparse_valid.shape[0], 1), bool)
                sparse_valid = jnp.concatenate([sparse_valid, pad], axis=1)
        return self.sam_mask_decoder(
            features_bhwc, self.sam_prompt_encoder.get_dense_pe(), sparse, dense,
            multimask_output=multimask_output, sparse_valid_bn=sparse_valid,
        )

    @_at_config_precision
    def sam_heads(
        self,
        features_bhwc: jax.Array,
        point_coords: jax.Array | None,
        point_labels: jax.Array | None,
        mask_inputs: jax.Array | None,
        multimask_output: bool,
        point_valid: jax.Array | None = None,
    ) -> dict:
        """`SAM2Base._forward_sam_heads`: decode, gate by object score, build the pointer.

        With no points, one padding point is sent (as the official); mask inputs of another
        size are first resized (antialiased bilinear) to the prompt encoder's 4h x 4w.
        point_valid (B, N) bool or None: see `prompt_and_decode`.
        Returns low_res_multimasks (B, M, 4h, 4w), high_res_multimasks (B, M, S, S),
        ious (B, M), low_res_masks / high_res_masks (B, 1, ., .) of the chosen mask,
        obj_ptr (B, 256), object_score_logits (B, 1).
        """
        cfg = self.cfg
        b = features_bhwc.shape[0]
        if point_coords is None:
            point_coords = jnp.zeros((b, 1, 2), jnp.float32)
            point_labels = -jnp.ones((b, 1), jnp.int32)
        if mask_inputs is not None:
            s = cfg.low_res_mask_size
            mask_inputs = resize_bilinear(mask_inputs, s, s, antialias=True)
        out = self.prompt_and_decode(features_bhwc, point_coords, point_labels, mask_inputs,
                                     multimask_output, point_valid=point_valid)
        low_res_multimasks = out["masks"].astype(jnp.float32)
        obj_logits = out["object_score_logits"].astype(jnp.float32)
        is_obj = obj_logits > 0  # (B, 1)
        if cfg.pred_obj_scores:
            low_res_multimasks = jnp.where(is_obj[:, :, None, None], low_res_multimasks,
                                           NO_OBJ_SCORE)
        high_res_multimasks = upsample_masks(low_res_multimasks, cfg.image_size)
        ious = out["iou_pred"].astype(jnp.float32)
        tokens = out["sam_tokens_out"]
        if multimask_output:
            best = jnp.argmax(ious, axis=-1)  # (B,)
            take = functools.partial(jnp.take_along_axis, axis=1)
            low_res_masks = take(low_res_multimasks, best[:, None, None, None])
            high_res_masks = take(high_res_multimasks, best[:, None, None, None])
            token = take(tokens, best[:, None, None])[:, 0] if tokens.shape[1] > 1 else tokens[:, 0]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
            token = tokens[:, 0]
        obj_ptr = self.obj_ptr_proj(token).astype(jnp.float32)
        if cfg.pred_obj_scores:
            lam = jax.nn.sigmoid(obj_logits) if cfg.soft_no_obj_ptr else is_obj.astype(jnp.float32)
            if cfg.fixed_no_obj_ptr:
                obj_ptr = lam * obj_ptr
            obj_ptr = obj_ptr + (1 - lam) * self.no_obj_ptr
        return dict(
            low_res_multimasks=low_res_multimasks, high_res_multimasks=high_res_multimasks,
            ious=ious, low_res_masks=low_res_masks, high_res_masks=high_res_masks,
            obj_ptr=obj_ptr, object_score_logits=obj_logits,
        )

    @_at_config_precision
    def mask_as_output(self, features_bhwc: jax.Array, mask_inputs: jax.Array) -> dict:
        """`SAM2Base._use_mask_as_output`: a mask prompt (B, S, S, 1) in {0, 1} is the output.

        Logits are mask * 20 - 10 (antialiased bilinear down to 4h x 4w), IoU is 1; the pointer
        still comes from the SAM heads, prompted with the mask after `mask_downsample`; the
        object is present iff any mask pixel is > 0.
        """
        cfg = self.cfg
        out_scale, out_bias = 20.0, -10.0
        m = mask_inputs.astype(jnp.float32)
        high_res_masks = m * out_scale + out_bias  # (B, S, S, 1)
        s = cfg.low_res_mask_size
        low_res_masks = resize_bilinear(high_res_masks, s, s, antialias=True)
        b = m.shape[0]
        ious = jnp.ones((b, 1), jnp.float32)
        if cfg.use_obj_ptrs_in_encoder:
            prompt = self.mask_downsample(m.astype(layers.compute_dtype(cfg.compute_dtype)))
            heads = self.sam_heads(features_bhwc, None, None, prompt.astype(jnp.float32),
                                   multimask_output=False)
            obj_ptr = heads["obj_ptr"]
        else:
            obj_ptr = jnp.zeros((b, cfg.hidden_dim), jnp.float32)
        is_obj = jnp.any(m.reshape(b, -1) > 0.0, axis=1, keepdims=True).astype(jnp.float32)
        obj_logits = out_scale * is_obj + out_bias  # (B, 1): +10 present, -10 absent
        if cfg.pred_obj_scores:
            if cfg.fixed_no_obj_ptr:
                obj_ptr = is_obj * obj_ptr
            obj_ptr = obj_ptr + (1 - is_obj) * self.no_obj_ptr
        to_bmhw = lambda x: jnp.transpose(x, (0, 3, 1, 2))  # (B, H, W, 1) -> (B, 1, H, W)
        return dict(
            low_res_multimasks=to_bmhw(low_res_masks), high_res_multimasks=to_bmhw(high_res_masks),
            ious=ious, low_res_masks=to_bmhw(low_res_masks),
            high_res_masks=to_bmhw(high_res_masks), obj_ptr=obj_ptr,
            object_score_logits=obj_logits,
        )

    # ------------------------------------------------------------------ memory
    @_at_config_precision
    def condition_on_memory(self, curr_bnc, curr_pos_bnc, memory_bmc, memory_pos_bmc,
                            num_obj_ptr_tokens: int, key_valid_bm=None,
                            deterministic: bool = True, readout_bme=None):
        """Memory attention: current tokens (B, HW, 256) attend to memory (B, M, 64); with
        readout_bme also the per-layer readout (`MemoryAttention`)."""
        return self.memory_attention(curr_bnc, curr_pos_bnc, memory_bmc, memory_pos_bmc,
                                     num_obj_ptr_tokens=num_obj_ptr_tokens,
                                     key_valid_bm=key_valid_bm, deterministic=deterministic,
                                     readout_bme=readout_bme)

    @_at_config_precision
    def encode_memory(self, features_bhwc, high_res_masks_bhw1, skip_mask_sigmoid: bool = True):
        """Memory encoder on the raw backbone features and prepared mask logits."""
        return self.memory_encoder(features_bhwc, high_res_masks_bhw1,
                                   skip_mask_sigmoid=skip_mask_sigmoid)

    @_at_config_precision
    def __call__(self, images_bhwc: jax.Array, point_coords: jax.Array,
                 point_labels: jax.Array) -> dict:
        """Initialisation entry point touching every parameter: an initial conditioning frame
        (no memory), its memory encoding, one memory-conditioned frame, and a mask prompt."""
        feats, pos = self.encode_image(images_bhwc)
        b, h, w, d = feats.shape
        first = self.sam_heads(feats + self.no_mem_embed, point_coords, point_labels, None, True)
        mem, mem_pos = self.encode_memory(feats, jnp.transpose(first["high_res_masks"],
                                                               (0, 2, 3, 1)))
        tpos = self.maskmem_tpos_enc[self.cfg.num_maskmem - 1]  # conditioning-frame t_pos 0
        memory = mem.reshape(b, h * w, -1)
        memory_pos = mem_pos.reshape(b, h * w, -1) + tpos.reshape(1, 1, -1)
        cond = self.condition_on_memory(feats.reshape(b, h * w, d), pos.reshape(b, h * w, d),
                                        memory, memory_pos, num_obj_ptr_tokens=0)
        second = self.sam_heads(cond.reshape(b, h, w, d), None, None, None, True)
        masked = self.mask_as_output(feats, (first["high_res_masks"][:, 0, :, :, None] > 0))
        _ = self.no_mem_pos_enc  # stored for weight compatibility; unused (spec §9)
        return dict(first=first, second=second, masked=masked)


def upsample_masks(masks_bmhw: jax.Array, size: int) -> jax.Array:
    """Bilinear (align_corners=False) upsampling of (B, M, h, w) logits to (B, M, size, size).
    The losses call it too, inside their checkpoint (`training/losses.py`)."""
    b, m, h, w = masks_bmhw.shape
    if (h, w) == (size, size):
        return masks_bmhw
    return jax.image.resize(masks_bmhw, (b, m, size, size), "linear", antialias=False)


def init_params(cfg: EfficientTAMConfig, rng: jax.Array | int = 0) -> dict:
    """Random float32 params of the whole model (unboxed), initialised on a tiny input."""
    model = EfficientTAM(cfg)
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    variables = jax.jit(model.init)(rng, *_init_inputs(cfg))
    return nn.meta.unbox(variables["params"])


def _init_inputs(cfg: EfficientTAMConfig):
    s = cfg.image_size
    return (jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, 1, 2), jnp.float32),
            jnp.ones((1, 1), jnp.int32))


@functools.lru_cache(maxsize=16)
def _abstract_variables(cfg: EfficientTAMConfig):
    return jax.eval_shape(EfficientTAM(cfg).init, jax.random.PRNGKey(0), *_init_inputs(cfg))


def abstract_param_shapes(cfg: EfficientTAMConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{flax param path: shape} of the model, computed without allocating (eval_shape)."""
    params = nn.meta.unbox(_abstract_variables(cfg)["params"])
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {tuple(k.key for k in path): tuple(v.shape) for path, v in flat}


def logical_axes(cfg: EfficientTAMConfig):
    """The logical axis names of every parameter (a pytree of PartitionSpecs)."""
    return nn.get_partition_spec(_abstract_variables(cfg))["params"]
