"""Image encoder: plain ViTDet-style ViT trunk + single-scale ViTDet neck (spec §2).

Paper: EfficientTAM replaces SAM 2's hierarchical Hiera with a plain, non-hierarchical ViT
(ViT-Ti / ViT-S, §3.1 "Efficient image encoder") and takes a single 1/16-scale feature map.
Mirrors `sam2/modeling/backbones/vitdet.py` (`Attention`, `Block`, `ViT`),
`sam2/modeling/backbones/utils.py` (`window_partition`, `get_abs_pos`) and
`sam2/modeling/backbones/image_encoder.py` (`ViTDetNeck`, `ImageEncoder` with scalp 0).

Layout is NHWC: images (B, H, W, 3), already normalised -> trunk (B, H/16, W/16, C) ->
neck features and sine PE, each (B, H/16, W/16, hidden_dim).

Numerics that matter for parity (spec §11):
- The learned 14 x 14 `pos_embed` (plus an unused cls slot) is resized on every call with
  PyTorch's bicubic (Keys a = -0.75, half-pixel centres, clamped borders), implemented here as a
  separable product with constant (out, in) interpolation matrices; `jax.image.resize("cubic")`
  uses a = -0.5 and is off by ~0.4.
- Window blocks zero-pad the already-normed tokens at the bottom / right to a multiple of the
  window size; the padded tokens take part in attention as keys and values (no mask), and are
  cropped afterwards. Here the padding is applied to the qkv map instead, with a zero token's
  projection (= the bias), which gives the same keys and values without projecting the pads
  (`ViTAttention`).
- GELU is the exact erf form; LayerNorm eps 1e-6; no final norm after the last block.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tam_jax.configs import EfficientTAMConfig
from tam_jax.models import layers
from tam_jax.models.attention import attend
from tam_jax.models.position import sine_position_encoding

_HIGHEST = jax.lax.Precision.HIGHEST

# ---------------------------------------------------------------------------- pos-embed resize

_CUBIC_A = -0.75  # PyTorch's bicubic constant (upsample_bicubic2d)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix M with M @ x == torch bicubic resize of x (1-D).

    `F.interpolate(mode="bicubic", align_corners=False)` without antialias: source coordinate
    (i + 0.5) * in / out - 0.5 (not clamped for cubic), taps floor - 1 .. floor + 2 with indices
    clamped to [0, in - 1] (border replication), weights from the fractional part clamped to
    [0, 1]. Taps that clamp onto the same index add up.
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    t = np.clip(src - base, 0.0, 1.0)
    w = _cubic_weights(t)  # (out, 4)
    idx = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, in_size - 1)
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.ravel()), w.ravel())
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


def resize_pos_embed_bicubic(pos_embed_1nc: jax.Array, out_h: int, out_w: int) -> jax.Array:
    """`get_abs_pos`: drop the cls slot, bicubic-resize the square grid to (out_h, out_w).

    pos_embed_1nc: (1, 1 + g * g, C). Returns (1, out_h, out_w, C) float32. When the grid
    already has the requested size it is only reshaped, as the official code does.
    """
    grid_nc = pos_embed_1nc[0, 1:].astype(jnp.float32)  # (g*g, C), cls slot dropped
    g = math.isqrt(grid_nc.shape[0])
    if g * g != grid_nc.shape[0]:
        raise ValueError(f"pos_embed has {grid_nc.shape[0]} grid positions, not a square")
    grid = grid_nc.reshape(g, g, -1)  # (g, g, C)
    if (g, g) == (out_h, out_w):
        return grid[None]
    m_h = jnp.asarray(bicubic_matrix(g, out_h))  # (out_h, g)
    m_w = jnp.asarray(bicubic_matrix(g, out_w))  # (out_w, g)
    out = jnp.einsum("oi,ijc->ojc", m_h, grid, precision=_HIGHEST)  # (out_h, g, C)
    out = jnp.einsum("pj,ojc->opc", m_w, out, precision=_HIGHEST)  # (out_h, out_w, C)
    return out[None]


# ---------------------------------------------------------------------------- windows


def window_partition(x_bhwc: jax.Array, window: int, pad_value: jax.Array | float = 0.0,
                     ) -> tuple[jax.Array, tuple[int, int]]:
    """Pad H, W at the bottom / right to multiples of `window`, split into windows.

    (B, H, W, C) -> ((B * nh * nw, window * window, C), (Hp, Wp)); windows are ordered
    row-major per image, tokens row-major inside a window (as `window_partition`). Padded
    tokens are `pad_value`: a scalar (zeros by default) or one token, (C,) or (1, C).
    """
    b, h, w, c = x_bhwc.shape
    ph, pw = (-h) % window, (-w) % window
    hp, wp = h + ph, w + pw
    if ph or pw:
        token = jnp.reshape(jnp.asarray(pad_value, x_bhwc.dtype), (-1,))  # (1,) or (C,)
        x_bhwc = jnp.broadcast_to(token, (b, hp, wp, c)).at[:, :h, :w, :].set(x_bhwc)
    x = x_bhwc.reshape(b, hp // window, window, wp // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, nh, nw, ws, ws, C)
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(
    windows: jax.Array, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`: (B * nh * nw, ws * ws, C) -> (B, H, W, C), crop padding."""
    (hp, wp), (h, w) = padded_hw, hw
    nh, nw = hp // window, wp // window
    c = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)  # (B, Hp, Wp, C)
    return x[:, :h, :w, :]


# ---------------------------------------------------------------------------- blocks


class ViTAttention(nn.Module):
    """`vitdet.Attention`: fused qkv projection, multi-head SDPA, output projection; global, or
    inside windows of `window_size` x `window_size` tokens (`window_size` > 0).

    x (B, H, W, C) -> (B, H, W, C). The fused `qkv` output is ordered [q | k | v], each
    [head 0 .. head n-1] x head_dim (the official reshape (B, N, 3, heads, head_dim)).
    Scale 1 / sqrt(head_dim); softmax in float32.

    Windows without padded-token waste: the official pads the normed tokens with zeros to a
    multiple of the window and projects every token, padding included. A zero token's qkv is
    exactly the qkv bias, so the real tokens are projected alone and their qkv map is padded
    with the projection of one zero token (the same value, bit for bit); the padded tokens
    still take part in attention as keys and values, as in the official. The output
    projection runs after the padding is cropped. At 512 px (32 x 32 tokens, windows of 14 ->
    42 x 42) that skips 42 % of the window blocks' qkv and proj FLOPs.
    """

    dim: int
    num_heads: int
    window_size: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        if self.dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide dim {self.dim}")
        b, h, w, c = x_bhwc.shape
        ws, heads, dh = self.window_size, self.num_heads, self.dim // self.num_heads
        to_qkv = layers.dense(3 * self.dim, ("embed", "qkv"), "qkv", dtype=self.dtype)
        qkv = to_qkv(x_bhwc)  # (B, H, W, 3C): real tokens only
        if ws > 0:
            zero_token_qkv = to_qkv(jnp.zeros((1, c), x_bhwc.dtype))  # (1, 3C) = the bias
            qkv, padded_hw = window_partition(qkv, ws, pad_value=zero_token_qkv)  # (B*nW, ws^2, 3C)
        else:
            qkv = qkv.reshape(b, h * w, 3 * self.dim)
        n_seq, n = qkv.shape[:2]
        qkv = qkv.reshape(n_seq, n, 3, heads, dh).transpose(2, 0, 3, 1, 4)  # (3, B', H, N, Dh)
        out = attend(qkv[0], qkv[1], qkv[2])  # (B', H, N, Dh); query-chunked when N is large
        out = out.transpose(0, 2, 1, 3).reshape(n_seq, n, self.dim)
        if ws > 0:
            out = window_unpartition(out, ws, padded_hw, (h, w))  # padding cropped
        else:
            out = out.reshape(b, h, w, self.dim)
        return layers.dense(self.dim, ("qkv", "embed"), "proj", dtype=self.dtype)(out)


class ViTBlock(nn.Module):
    """`vitdet.Block`: pre-norm attention (windowed if window_size > 0, else global) + MLP.

    x (B, H, W, C) -> (B, H, W, C). No LayerScale, no drop path, no dropout (official config).
    """

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    window_size: int = 0
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        y = layers.layer_norm("norm1", self.eps, dtype=self.dtype)(x_bhwc)
        y = ViTAttention(self.dim, self.num_heads, self.window_size, dtype=self.dtype,
                         name="attn")(y)
        x_bhwc = x_bhwc + y
        y = layers.layer_norm("norm2", self.eps, dtype=self.dtype)(x_bhwc)
        hidden = int(self.dim * self.mlp_ratio)
        # `sam2_utils.MLP(dim, hidden, dim, num_layers=2, activation=nn.GELU)`
        mlp = layers.MLP(hidden, self.dim, 2, in_axis="embed", out_axis="embed",
                         dtype=self.dtype, activation=layers.gelu, name="mlp")
        return x_bhwc + mlp(y)


def remat_block(policy: str):
    """ViTBlock, rematerialised per `ViTConfig.remat` (parameter names are unchanged)."""
    if policy == "none":
        return ViTBlock
    if policy == "full":
        return nn.remat(ViTBlock)
    if policy == "dots":
        return nn.remat(ViTBlock, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"unknown remat policy {policy!r}")


class ViT(nn.Module):
    """`vitdet.ViT` trunk: 16 x 16 patch embed + resized abs. PE + blocks (no final norm).

    images (B, H, W, 3) normalised -> (B, H/16, W/16, embed_dim), the last block's output.
    """

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, images_bhwc: jax.Array) -> jax.Array:
        vit = self.cfg.vit
        dt = layers.compute_dtype(self.cfg.compute_dtype)
        c, g, p = vit.embed_dim, vit.pretrain_grid, vit.patch_size
        if images_bhwc.shape[1] % p or images_bhwc.shape[2] % p:
            raise ValueError(f"image size {images_bhwc.shape[1:3]} not a multiple of patch {p}")
        x = _PatchEmbed(c, p, dtype=dt, conv_impl=self.cfg.conv_impl,
                        name="patch_embed")(images_bhwc)  # (B, h, w, C)
        pos_embed = layers.param(
            self, "pos_embed", (1, 1 + g * g, c), (None, None, "embed"),
            init=nn.initializers.truncated_normal(0.02),
        )
        x = x + resize_pos_embed_bicubic(pos_embed, x.shape[1], x.shape[2]).astype(x.dtype)
        window_blocks = set(vit.window_block_indexes)
        block_cls = remat_block(vit.remat)
        for i in range(vit.depth):
            x = block_cls(
                c, vit.num_heads, vit.mlp_ratio,
                window_size=vit.window_size if i in window_blocks else 0,
                eps=vit.layer_norm_eps, dtype=dt, name=f"blocks_{i}",
            )(x)
        return x


class _PatchEmbed(nn.Module):
    """`backbones.utils.PatchEmbed`: Conv2d(3 -> C, kernel = stride = patch), NHWC out."""

    embed_dim: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, images_bhwc: jax.Array) -> jax.Array:
        p = self.patch_size
        return layers.conv(self.embed_dim, p, "proj", stride=p,
                           axes=(None, None, None, "embed"), dtype=self.dtype,
                           impl=self.conv_impl)(images_bhwc)


class ViTDetNeck(nn.Module):
    """`ViTDetNeck` with `neck_norm="LN"`: one branch `convs_0` and the sine PE.

    trunk features (B, h, w, C) -> (features (B, h, w, d), pos (B, h, w, d)), d = hidden_dim:
    conv 1x1 (no bias) -> LN2d -> conv 3x3 pad 1 (no bias) -> LN2d; PE =
    `PositionEmbeddingSine(d)` of the h x w grid, broadcast over the batch.
    """

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
        dt = layers.compute_dtype(self.cfg.compute_dtype)
        feats = _NeckBranch(self.cfg.hidden_dim, dtype=dt, conv_impl=self.cfg.conv_impl,
                            name="convs_0")(x_bhwc)
        b, h, w, d = feats.shape
        pos = sine_position_encoding(h, w, d).astype(feats.dtype)
        return feats, jnp.broadcast_to(pos[None], (b, h, w, d))


class _NeckBranch(nn.Module):
    """The torch `nn.Sequential` `convs.0`: conv_1x1, norm_0, conv_3x3, norm_1."""

    d_model: int
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        d, dt = self.d_model, self.dtype
        x = layers.conv(d, 1, "conv_1x1", use_bias=False, axes=(None, None, "embed", "hidden"),
                        dtype=dt, impl=self.conv_impl)(x_bhwc)
        x = layers.layer_norm("norm_0", self.eps, dtype=dt)(x)
        x = layers.conv(d, 3, "conv_3x3", padding=1, use_bias=False, dtype=dt,
                        impl=self.conv_impl)(x)
        return layers.layer_norm("norm_1", self.eps, dtype=dt)(x)


class ImageEncoder(nn.Module):
    """`image_encoder.ImageEncoder` (scalp 0): trunk + neck.

    images (B, S, S, 3), normalised with the ImageNet mean / std -> (features, pos), each
    (B, S/16, S/16, hidden_dim): the official `vision_features` and `vision_pos_enc[0]` in NHWC.
    """

    cfg: EfficientTAMConfig

    @nn.compact
    def __call__(self, images_bhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
        trunk = ViT(self.cfg, name="trunk")(images_bhwc)
        return ViTDetNeck(self.cfg, name="neck")(trunk)
