"""Position encodings: 2-D sine PE, random-Fourier PE, axial RoPE (spec §2.2, §3.1, §5.1).

Mirrors `sam2/modeling/position_encoding.py`. The sine PE and RoPE tables depend only on static
sizes, so they are computed once with numpy (float32, like the official float32 arithmetic) and
enter the graph as constants.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=32)
def _sine_pe_np(h: int, w: int, num_pos_feats: int, temperature: float) -> np.ndarray:
    half = num_pos_feats // 2
    scale = np.float32(2 * math.pi)
    eps = np.float32(1e-6)
    # Positions 1..H / 1..W, normalised by (last + eps) and scaled to [0, 2*pi].
    y = np.arange(1, h + 1, dtype=np.float32) / (np.float32(h) + eps) * scale
    x = np.arange(1, w + 1, dtype=np.float32) / (np.float32(w) + eps) * scale
    i = np.arange(half, dtype=np.float32)
    dim_t = np.float32(temperature) ** (2 * (i // 2) / np.float32(half))  # (half,)

    def encode(p):  # (n,) -> (n, half), sin on even channels, cos on odd ones
        a = p[:, None] / dim_t
        out = np.empty_like(a)
        out[:, 0::2] = np.sin(a[:, 0::2])
        out[:, 1::2] = np.cos(a[:, 1::2])
        return out

    pos_y = np.broadcast_to(encode(y)[:, None, :], (h, w, half))
    pos_x = np.broadcast_to(encode(x)[None, :, :], (h, w, half))
    return np.concatenate([pos_y, pos_x], axis=-1).astype(np.float32)  # (h, w, C): [y | x]


def sine_position_encoding(
    h: int, w: int, num_pos_feats: int, temperature: float = 10000.0
) -> jax.Array:
    """`PositionEmbeddingSine(num_pos_feats, normalize=True)` on an h x w grid.

    Returns (h, w, num_pos_feats) float32; channels are [y-part (C/2), x-part (C/2)], each
    interleaving sin (even) and cos (odd), exactly the official NCHW output moved to HWC.
    """
    return jnp.asarray(_sine_pe_np(h, w, num_pos_feats, float(temperature)))


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier PE of the prompt encoder (`PositionEmbeddingRandom`, spec §5.1).

    Holds the official *buffer* `positional_encoding_gaussian_matrix` (2, num_pos_feats) as a
    parameter so it converts with the weights (training freezes it).
    """

    num_pos_feats: int = 128

    def setup(self):
        self.positional_encoding_gaussian_matrix = self.param(
            "positional_encoding_gaussian_matrix",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None)),
            (2, self.num_pos_feats),
            jnp.float32,
        )

    def encode_coords(self, coords: jax.Array) -> jax.Array:
        """Encode points normalised to [0, 1]: (..., 2) as (x, y) -> (..., 2 * num_pos_feats)."""
        c = 2.0 * coords.astype(jnp.float32) - 1.0
        c = jnp.matmul(c, self.positional_encoding_gaussian_matrix,
                       precision=jax.lax.Precision.HIGHEST)
        c = 2.0 * np.pi * c
        return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)

    def dense_pe(self, h: int, w: int) -> jax.Array:
        """PE of every cell centre of an h x w grid: (h, w, 2 * num_pos_feats)."""
        ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)  # (h, w, 2)
        return self.encode_coords(grid)

    def __call__(self, h: int, w: int) -> jax.Array:
        return self.dense_pe(h, w)


@functools.lru_cache(maxsize=32)
def _axial_rope_np(end_x: int, end_y: int, dim: int, theta: float):
    n_freq = dim // 4
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, dim, 4, dtype=np.float32)[:n_freq] / dim))
    t = np.arange(end_x * end_y, dtype=np.float32)
    t_x = t % end_x  # row-major token index -> column
    t_y = np.floor(t / end_x)  # -> row
    angles = np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1)  # (N, dim/2)
    angles = angles.astype(np.float32)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def axial_rope(
    end_x: int, end_y: int, dim: int, theta: float = 10000.0
) -> tuple[jax.Array, jax.Array]:
    """Axial RoPE tables for an end_y x end_x grid (spec §3.1).

    Returns (cos, sin), each (end_x * end_y, dim // 2): complex pair k < dim/4 rotates by
    x * freq_k, pair k >= dim/4 by y * freq_(k - dim/4), freq_j = theta^(-4j/dim).
    """
    cos, sin = _axial_rope_np(end_x, end_y, dim, float(theta))
    return jnp.asarray(cos), jnp.asarray(sin)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate interleaved pairs (x[2k], x[2k+1]) of the last axis by the table angles.

    x: (..., N, D); cos, sin: (N, D // 2) (or broadcastable). Computed in float32 and cast back
    to x's dtype, as the official `apply_rotary_enc`.
    """
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    re, im = xf[..., 0], xf[..., 1]
    out = jnp.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
