"""The memory encoder: fuses a frame's features with its predicted mask into memory (paper §3.1).

Mirrors `MaskDownSampler`, `CXBlock`, `Fuser` and `MemoryEncoder` of
`sam2/modeling/memory_encoder.py` (spec §4.1), NHWC:
  mask (B, S, S, 1) -> [sigmoid] -> MaskDownSampler (4 x [conv k3 s2 p1, LayerNorm2d, GELU],
  then a 1x1 conv to 256) -> + pix_feat_proj(features) -> Fuser (2 ConvNeXt blocks)
  -> out_proj (1x1 conv 256 -> 64); plus the sine PE of the 64-channel output.
LayerNorm2d eps is 1e-6 (downsampler and CXBlocks).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tam_jax.configs import EfficientTAMConfig
from tam_jax.convert.key_table import num_mask_downsampler_stages
from tam_jax.models import layers
from tam_jax.models.position import sine_position_encoding

_LN2D_EPS = 1e-6


class MaskDownSampler(nn.Module):
    """Mask (B, S, S, 1) -> (B, S/p, S/p, embed_dim), p = the ViT patch size (16 released).
    Submodules `encoder_{i}` follow the official `nn.Sequential` indices (conv 3i, norm 3i+1,
    GELU 3i+2, final conv 3n)."""

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, mask_bhw1: jax.Array) -> jax.Array:
        me = self.cfg.memory_encoder
        dt = layers.compute_dtype(self.cfg.compute_dtype)
        n = num_mask_downsampler_stages(self.cfg)
        x, chans = mask_bhw1.astype(dt), 1
        for s in range(n):
            chans *= me.downsampler_stride**2  # channel capacity grows with each downsample
            x = layers.conv(chans, me.downsampler_kernel, f"encoder_{3 * s}",
                            stride=me.downsampler_stride, padding=me.downsampler_padding,
                            axes=(None, None, None, None), dtype=dt,
                            impl=self.cfg.conv_impl)(x)
            x = layers.layer_norm(f"encoder_{3 * s + 1}", _LN2D_EPS, dt)(x)
            x = layers.gelu(x)
        return layers.conv(self.cfg.hidden_dim, 1, f"encoder_{3 * n}",
                           axes=(None, None, None, "hidden"), dtype=dt,
                           impl=self.cfg.conv_impl)(x)


class CXBlock(nn.Module):
    """ConvNeXt block: x + gamma * pwconv2(gelu(pwconv1(norm(dwconv(x))))). (B, h, w, C)."""

    dim: int
    kernel_size: int = 7
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        d, dt = self.dim, self.dtype
        y = layers.conv(d, self.kernel_size, "dwconv", padding=self.kernel_size // 2, groups=d,
                        axes=(None, None, None, "hidden"), dtype=dt,
                        impl=self.conv_impl)(x_bhwc)
        y = layers.layer_norm("norm", _LN2D_EPS, dt)(y)
        y = layers.dense(4 * d, ("hidden", "mlp"), "pwconv1", dtype=dt)(y)
        y = layers.dense(d, ("mlp", "hidden"), "pwconv2", dtype=dt)(layers.gelu(y))
        gamma = layers.param(self, "gamma", (d,), ("hidden",),
                             init=nn.initializers.constant(1e-6))  # layer scale
        return x_bhwc + gamma.astype(y.dtype) * y


class Fuser(nn.Module):
    """`fuser_layers` CXBlocks named `layers_{i}` (no input projection)."""

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        me = self.cfg.memory_encoder
        dt = layers.compute_dtype(self.cfg.compute_dtype)
        for i in range(me.fuser_layers):
            x_bhwc = CXBlock(self.cfg.hidden_dim, me.fuser_kernel, dt, self.cfg.conv_impl,
                             name=f"layers_{i}")(x_bhwc)
        return x_bhwc


class MemoryEncoder(nn.Module):
    """Frame features + mask -> memory features and their sine PE.

    pix_feat (B, h, w, 256) raw backbone features; mask (B, ph, pw, 1) logits, p = the patch
    size (sigmoid applied unless `skip_mask_sigmoid`, which the model uses after its own scaled
    sigmoid).
    Returns (features (B, h, w, mem_dim), pos (B, h, w, mem_dim) float32).
    """

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, pix_feat_bhwc: jax.Array, mask_bhw1: jax.Array,
                 skip_mask_sigmoid: bool = False):
        cfg = self.cfg
        dt = layers.compute_dtype(cfg.compute_dtype)
        b, h, w, _ = pix_feat_bhwc.shape
        p = self.cfg.vit.patch_size  # the image / feature-grid ratio (16 when released)
        if mask_bhw1.shape[1:] != (p * h, p * w, 1):
            raise ValueError(f"mask {mask_bhw1.shape} does not match features {pix_feat_bhwc.shape}"
                             f" (expected (B, {p}h, {p}w, 1))")
        masks = mask_bhw1.astype(jnp.float32)
        if not skip_mask_sigmoid:
            masks = jax.nn.sigmoid(masks)
        masks = MaskDownSampler(cfg, name="mask_downsampler")(masks)
        x = layers.conv(cfg.hidden_dim, 1, "pix_feat_proj", axes=(None, None, "hidden", "hidden"),
                        dtype=dt, impl=cfg.conv_impl)(pix_feat_bhwc.astype(dt))
        x = Fuser(cfg, name="fuser")(x + masks)
        if cfg.mem_dim != cfg.hidden_dim:
            x = layers.conv(cfg.mem_dim, 1, "out_proj", axes=(None, None, "hidden", "mem"),
                            dtype=dt, impl=cfg.conv_impl)(x)
        pos = sine_position_encoding(h, w, cfg.mem_dim)
        return x, jnp.broadcast_to(pos[None], (b, h, w, cfg.mem_dim))
