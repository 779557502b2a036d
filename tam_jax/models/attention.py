"""Attention cores: plain, RoPE, and the pooled memory cross-attention of EfficientTAM.

Paper §3.2 (eq. 5 / eq. 6); mirrors `Attention`, `RoPEAttention`, `EfficientRoPEAttention1`
and `EfficientRoPEAttention2` of `sam2/modeling/sam/transformer.py` (spec §3.1, §3.2).

All three share one projection layout (`q_proj`, `k_proj`, `v_proj`, `out_proj`, internal
width `embedding_dim / downsample_rate`, split into `num_heads`) and one softmax core,
`attend`, which takes an additive per-key logit bias and a per-key validity mask. The mask is
how the static-shape memory bank removes empty slots: a masked key gets probability exactly 0,
so a masked slot equals an absent one.

The pooled cross-attention (`PooledMemoryCrossAttention`) generalises the two official
classes for the ablation sweeps:
  * `pool_window` p: spatial memory keys / values (already RoPE-rotated keys) are average-pooled
    per memory frame in p x p windows. p = 1 is plain `RoPEAttention`.
  * `log_area_constant`: "logits" adds ln(p^2) to each pooled key's logit (eq. 5, official
    `_1`); "keys" adds ln(p^2) to every component of each pooled key vector (eq. 6 taken
    literally, official `_2`, spec §3.2: do not "fix" it); "none" adds nothing.
  * `pool_pointer_tokens`: object-pointer tokens (the last `num_k_exclude_rope` keys) are never
    pooled officially; with True they are averaged in consecutive groups of p^2 tokens (with
    p = 2 each 256-d pointer's four 64-d sub-tokens become one), and get ln(group size).
As officially, pooling applies only with >= 2 spatial memory frames; with one the exact full
attention runs. With a key mask that rule is decided per batch element from the valid frames.
"""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tam_jax.models import layers
from tam_jax.models.position import apply_rope, axial_rope

# Logit given to masked keys; exp(_MASKED - max) underflows to exactly 0 in float32.
_MASKED = float(jnp.finfo(jnp.float32).min)


# Queries are processed in chunks of this many when there are more (and it divides them): the
# (N, M) logits of a chunk stay cache-sized instead of materialising N x M at once (4096 x
# 28,700 floats = 470 MB per head for a full memory bank at 1024 px). Same result.
QUERY_CHUNK = 256
_query_chunk = QUERY_CHUNK  # what `attend` uses when called without `query_chunk`


@contextlib.contextmanager
def query_chunking(size: int | None):
    """Trace `attend` calls inside with another query chunk (None: one chunk, no loop).

    For cost analysis: XLA's `cost_analysis()` counts a loop body once, so the FLOPs of a
    chunked attention come out divided by the number of chunks. Results are identical either
    way; only the peak memory differs. Affects tracing, not already compiled functions.
    """
    global _query_chunk
    saved, _query_chunk = _query_chunk, (size or 1 << 62)
    try:
        yield
    finally:
        _query_chunk = saved


# With several tracked objects batched, each query chunk's float32 logits / probabilities are
# objects x 256 x 7232 floats (118 MB at 16 objects and a 512 model's full memory) and the
# softmax streams them through memory; one object at a time they stay cache-sized. XLA:CPU ran
# the memory attention core 16 objects at a time at 99 GFLOP/s (bf16 operands; 127 float32),
# looped at 291 (163), as fast as one object (`python scripts/benchmark.py matmul`,
# docs/benchmarks.md). So with batch looping on, an attention over at least this many keys
# (the memory cross-attention) loops over its batch: the same result, another schedule.
BATCH_LOOP_MIN_KEYS = 2048
_batch_loop = False  # what `attend` traces with; `EfficientTAM` sets it from its config


@contextlib.contextmanager
def batch_looping(on: bool):
    """Trace `attend` calls inside with (or without) the loop over the batch (above)."""
    global _batch_loop
    saved, _batch_loop = _batch_loop, bool(on)
    try:
        yield
    finally:
        _batch_loop = saved


def attend(
    q_bhnd: jax.Array,
    k_bhmd: jax.Array,
    v_bhmd: jax.Array,
    logit_bias_bm: jax.Array | None = None,
    key_valid_bm: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    query_chunk: int | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(D) + bias) v, with masked keys removed. -> (B, H, N, D).

    q (B, H, N, D); k, v (B, H, M, D); logit_bias (B, M) or (M,) float; key_valid (B, M) bool.
    Logits and softmax run in float32; the result has v's dtype. Dropout (on the attention
    probabilities, as `F.scaled_dot_product_attention(dropout_p=...)`) when `dropout_rng` is set.
    """
    use_dropout = dropout_rng is not None and dropout_rate > 0.0
    b, m = q_bhnd.shape[0], k_bhmd.shape[2]
    if _batch_loop and b > 1 and m >= BATCH_LOOP_MIN_KEYS and not use_dropout:
        return _attend_per_batch_element(q_bhnd, k_bhmd, v_bhmd, logit_bias_bm, key_valid_bm,
                                         query_chunk)
    n = q_bhnd.shape[2]
    query_chunk = query_chunk or _query_chunk
    out_dtype = v_bhmd.dtype
    # bf16 matmul operands (`layers.matmul_precision`) rounded once, not in every query chunk
    q_bhnd, k_bhmd, v_bhmd = layers.matmul_operands(q_bhnd, k_bhmd, v_bhmd)
    bias = None
    if logit_bias_bm is not None:
        bias = jnp.asarray(logit_bias_bm, jnp.float32)
        bias = bias[:, None, None, :] if bias.ndim == 2 else bias
    if key_valid_bm is not None:
        # fold the mask into the bias: masked keys get a logit whose exp underflows to 0
        bias = jnp.where(key_valid_bm[:, None, None, :], 0.0 if bias is None else bias,
                         _MASKED).astype(jnp.float32)

    def one_chunk(q, rng):
        scale = 1.0 / math.sqrt(q.shape[-1])
        logits = layers.einsum("bhnd,bhmd->bhnm", q, k_bhmd,
                               preferred_element_type=jnp.float32) * scale
        if bias is not None:
            logits = logits + bias
        # Normalise after the value product: one (N, D) division instead of an (N, M) one.
        e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
        denom = jnp.sum(e, axis=-1, keepdims=True)
        if use_dropout:
            keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, e.shape)
            e = jnp.where(keep, e / (1.0 - dropout_rate), 0.0)
        out = layers.einsum("bhnm,bhmd->bhnd", e.astype(v_bhmd.dtype), v_bhmd,
                            preferred_element_type=jnp.float32)
        return (out / denom).astype(out_dtype)

    if n <= query_chunk or n % query_chunk:
        return one_chunk(q_bhnd, dropout_rng)
    b, h, _, d = q_bhnd.shape
    chunks = q_bhnd.reshape(b, h, n // query_chunk, query_chunk, d).transpose(2, 0, 1, 3, 4)
    # Without the checkpoint, the backward of `lax.map` keeps every chunk's residuals (its
    # float32 probabilities, dropout mask, ...) stacked: 3.8x one float32 (N, M) matrix, half
    # of what the unchunked gradient needs. Rematerialised, a chunk's backward recomputes
    # its logits from q, k, v: the peak is one chunk's (chunk, M), for one more q k^T product.
    # Inference (no gradient) is unaffected.
    body = jax.checkpoint(one_chunk, prevent_cse=False)
    if use_dropout:  # one dropout key per query chunk
        rngs = jax.random.split(dropout_rng, n // query_chunk)
        out = jax.lax.map(lambda a: body(*a), (chunks, rngs))  # (C, B, H, chunk, D)
    else:
        out = jax.lax.map(lambda c: body(c, None), chunks)
    return out.transpose(1, 2, 0, 3, 4).reshape(b, h, n, v_bhmd.shape[-1])


def _attend_per_batch_element(q_bhnd, k_bhmd, v_bhmd, logit_bias_bm, key_valid_bm,
                              query_chunk) -> jax.Array:
    """`attend` (no dropout) as a loop over the batch: one element's dots at a time."""
    b, m = q_bhnd.shape[0], k_bhmd.shape[2]
    bias = None
    if logit_bias_bm is not None:
        bias = jnp.broadcast_to(jnp.asarray(logit_bias_bm, jnp.float32), (b, m))

    def one(args):
        q, k, v, bias_m, valid_m = args
        add_batch = lambda x: None if x is None else x[None]
        return attend(q[None], k[None], v[None], add_batch(bias_m), add_batch(valid_m),
                      query_chunk=query_chunk)[0]

    return jax.lax.map(one, (q_bhnd, k_bhmd, v_bhmd, bias, key_valid_bm))


class Attention(nn.Module):
    """`sam/transformer.py::Attention`. q (B, N, embedding_dim), k / v (B, M, kv_in_dim).

    Returns (B, N, embedding_dim). Used by the two-way transformer (no dropout there).
    """

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    kv_in_dim: int | None = None
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @property
    def internal_dim(self) -> int:
        return self.embedding_dim // self.downsample_rate

    def project(self, q_bnc, k_bmc, v_bmc):
        """Input projections, split into heads: -> q (B, H, N, Dh), k / v (B, H, M, Dh)."""
        inner = self.internal_dim
        if inner % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide the internal dim {inner}")
        in_axis = "hidden" if self.kv_in_dim is None else "mem"
        q = layers.dense(inner, ("hidden", "mlp"), "q_proj", dtype=self.dtype)(q_bnc)
        k = layers.dense(inner, (in_axis, "mlp"), "k_proj", dtype=self.dtype)(k_bmc)
        v = layers.dense(inner, (in_axis, "mlp"), "v_proj", dtype=self.dtype)(v_bmc)
        # (B, N, H * Dh) -> (B, H, N, Dh)
        split = lambda x: x.reshape(*x.shape[:2], self.num_heads, -1).transpose(0, 2, 1, 3)
        return split(q), split(k), split(v)

    def finish(self, out_bhnd: jax.Array) -> jax.Array:
        """Merge heads and apply `out_proj`: (B, H, N, Dh) -> (B, N, embedding_dim)."""
        b, h, n, d = out_bhnd.shape
        out = out_bhnd.transpose(0, 2, 1, 3).reshape(b, n, h * d)
        proj = layers.dense(self.embedding_dim, ("mlp", "hidden"), "out_proj", dtype=self.dtype)
        return proj(out)

    def dropout_rng(self, deterministic: bool) -> jax.Array | None:
        if deterministic or self.dropout == 0.0:
            return None
        return self.make_rng("dropout")

    @nn.compact
    def __call__(self, q_bnc, k_bmc, v_bmc, key_valid_bm=None, deterministic: bool = True):
        q, k, v = self.project(q_bnc, k_bmc, v_bmc)
        out = attend(q, k, v, key_valid_bm=key_valid_bm, dropout_rate=self.dropout,
                     dropout_rng=self.dropout_rng(deterministic))
        return self.finish(out)


class RoPEAttention(Attention):
    """`RoPEAttention`: axial RoPE on q and on the first `M - num_k_exclude_rope` keys.

    `feat_hw` is the (h, w) token grid of the queries. With `rope_k_repeat` the key table is
    the query table tiled over memory frames (keys = frames x h*w spatial tokens, then the
    unrotated object-pointer tokens); otherwise q and k have the same length.
    """

    feat_hw: tuple[int, int] = (64, 64)
    rope_theta: float = 10000.0
    rope_k_repeat: bool = False

    def rotate(self, q_bhnd, k_bhmd, num_k_exclude_rope: int):
        """-> (q, k) with RoPE applied; pointer keys (the last `num_k_exclude_rope`) untouched."""
        h, w = self.feat_hw
        n, m = q_bhnd.shape[2], k_bhmd.shape[2]
        if n != h * w:
            raise ValueError(f"{n} query tokens do not form the {h}x{w} RoPE grid")
        num_k_rope = m - num_k_exclude_rope
        if num_k_rope < 0:
            raise ValueError(f"num_k_exclude_rope {num_k_exclude_rope} > {m} keys")
        cos, sin = axial_rope(w, h, q_bhnd.shape[-1], self.rope_theta)  # (n, Dh / 2)
        q = apply_rope(q_bhnd, cos, sin)
        if num_k_rope == 0:
            return q, k_bhmd
        if num_k_rope != n and not self.rope_k_repeat:
            raise ValueError(f"{num_k_rope} RoPE keys != {n} queries and rope_k_repeat is off")
        if num_k_rope % n:
            raise ValueError(f"{num_k_rope} spatial keys are not whole {h}x{w} memory frames")
        reps = num_k_rope // n
        k_rope = apply_rope(k_bhmd[:, :, :num_k_rope], jnp.tile(cos, (reps, 1)),
                            jnp.tile(sin, (reps, 1)))
        return q, jnp.concatenate([k_rope, k_bhmd[:, :, num_k_rope:]], axis=2)

    @nn.compact
    def __call__(self, q_bnc, k_bmc, v_bmc, num_k_exclude_rope: int = 0, key_valid_bm=None,
                 deterministic: bool = True):
        q, k, v = self.project(q_bnc, k_bmc, v_bmc)
        q, k = self.rotate(q, k, num_k_exclude_rope)
        out = attend(q, k, v, key_valid_bm=key_valid_bm, dropout_rate=self.dropout,
                     dropout_rng=self.dropout_rng(deterministic))
        return self.finish(out)


class PooledMemoryCrossAttention(RoPEAttention):
    """EfficientTAM's memory cross-attention with pooled spatial keys / values (paper §3.2).

    q (B, HW, 256) current-frame tokens; k / v (B, F*HW + P, kv_in_dim) memory tokens of F
    frames followed by P object-pointer tokens (P = `num_k_exclude_rope`). key_valid (B, M) bool
    marks real memory slots; a frame must be all valid or all masked. -> (B, HW, 256).
    """

    rope_k_repeat: bool = True
    pool_window: int = 2
    log_area_constant: str = "logits"
    pool_pointer_tokens: bool = False

    @nn.compact
    def __call__(self, q_bnc, k_bmc, v_bmc, num_k_exclude_rope: int = 0, key_valid_bm=None,
                 deterministic: bool = True, readout_bme=None):
        """readout_bme (B, M, E) or None: per-key values to read out with the same attention
        (pooled as the values are): -> (out, readout (B, N, E) float32) instead of out. The
        output is unchanged: the readout rides along as E extra value channels of every head,
        averaged over heads (training's memory-readout loss, `losses.memory_readout`)."""
        q, k, v = self.project(q_bnc, k_bmc, v_bmc)
        q, k = self.rotate(q, k, num_k_exclude_rope)
        if readout_bme is not None:
            extra = jnp.broadcast_to(readout_bme[:, None].astype(v.dtype),
                                     (v.shape[0], v.shape[1]) + readout_bme.shape[1:])
            v = jnp.concatenate([v, extra], axis=-1)
        rng = self.dropout_rng(deterministic)
        n, m = q.shape[2], k.shape[2]
        num_frames = (m - num_k_exclude_rope) // n
        full = lambda: attend(q, k, v, key_valid_bm=key_valid_bm, dropout_rate=self.dropout,
                              dropout_rng=rng)
        if self.pool_window == 1 or num_frames < 2:
            out = full()  # static: fewer than two spatial memory frames, as officially
        else:
            pooled = lambda: self._pooled(q, k, v, num_k_exclude_rope, key_valid_bm, rng)
            if key_valid_bm is None:
                out = pooled()
            else:
                # Valid frames decide per batch element (spec §3.2: the official rule counts
                # the frames present). Both paths are only computed when some element needs
                # the full one (e.g. the frame right after the first prompt).
                frames_valid = key_valid_bm[:, : num_frames * n].reshape(-1, num_frames, n)
                needs_full = jnp.sum(jnp.any(frames_valid, axis=-1), axis=-1) < 2  # (B,)
                mixed = lambda: jnp.where(needs_full[:, None, None, None], full(), pooled())
                out = jax.lax.cond(jnp.any(needs_full), mixed, pooled)
        if readout_bme is not None:
            e = readout_bme.shape[-1]
            readout = jnp.mean(out[..., -e:].astype(jnp.float32), axis=1)  # (B, N, E)
            return self.finish(out[..., :-e]), readout
        return self.finish(out)

    def _pooled(self, q, k, v, num_ptr: int, key_valid_bm, rng):
        """Pool spatial keys / values per frame (and pointers when asked), then attend."""
        p = self.pool_window
        h, w = self.feat_hw
        if h % p or w % p:
            raise ValueError(f"pool_window {p} does not divide the {h}x{w} memory grid")
        b, nh, m, d = k.shape
        num_spatial = m - num_ptr
        frames = num_spatial // (h * w)
        constant = math.log(p * p)

        def pool_grid(x):  # (B, H, F*h*w, D) -> (B, H, F*(h/p)*(w/p), D), frame then row major
            x = x.reshape(b, nh, frames, h // p, p, w // p, p, x.shape[-1])
            return x.astype(jnp.float32).mean(axis=(4, 6)).reshape(b, nh, -1, x.shape[-1])

        k_s, v_s = pool_grid(k[:, :, :num_spatial]), pool_grid(v[:, :, :num_spatial])
        n_pooled = k_s.shape[2]
        bias_s = jnp.full((n_pooled,), constant, jnp.float32)
        valid_s = None
        if key_valid_bm is not None:
            vm = key_valid_bm[:, :num_spatial].reshape(b, frames, h // p, p, w // p, p)
            valid_s = jnp.all(vm, axis=(3, 5)).reshape(b, -1)

        k_p = k[:, :, num_spatial:].astype(jnp.float32)
        v_p = v[:, :, num_spatial:].astype(jnp.float32)
        bias_p = jnp.zeros((num_ptr,), jnp.float32)
        valid_p = None if key_valid_bm is None else key_valid_bm[:, num_spatial:]
        if self.pool_pointer_tokens and num_ptr:
            k_p, v_p, bias_p, valid_p = self._pool_pointers(k_p, v_p, valid_p)

        if self.log_area_constant == "keys":
            k_s = k_s + constant  # eq. (6): added to every component of the pooled key vector
            if self.pool_pointer_tokens and num_ptr:
                k_p = k_p + (bias_p[:, None, :, None] if bias_p.ndim == 2
                             else bias_p[None, None, :, None])
        keys = jnp.concatenate([k_s, k_p], axis=2).astype(q.dtype)
        values = jnp.concatenate([v_s, v_p], axis=2).astype(v.dtype)
        bias = None
        if self.log_area_constant == "logits":  # eq. (5): ln(p^2) on each pooled key's logit
            bias_s_b = jnp.broadcast_to(bias_s, (b, n_pooled))
            bias = jnp.concatenate([bias_s_b, jnp.broadcast_to(bias_p, (b, bias_p.shape[-1]))],
                                   axis=1)
        valid = None
        if key_valid_bm is not None:
            valid = jnp.concatenate([valid_s, valid_p], axis=1)
        return attend(q, keys, values, logit_bias_bm=bias, key_valid_bm=valid,
                      dropout_rate=self.dropout, dropout_rng=rng)

    def _pool_pointers(self, k_p, v_p, valid_p):
        """Average pointer tokens in consecutive groups of p^2 (masked mean over valid ones).

        -> pooled k, v (B, H, P / p^2, D), log-count constant (B, P / p^2) (or (P / p^2,)
        without a mask), group validity (B, P / p^2) or None.
        """
        g = self.pool_window**2
        b, nh, num_ptr, d = k_p.shape
        if num_ptr % g:
            raise ValueError(f"{num_ptr} pointer tokens are not groups of pool_window^2 = {g}")
        groups = num_ptr // g
        if valid_p is None:
            pool = lambda x: x.reshape(b, nh, groups, g, x.shape[-1]).mean(axis=3)
            return pool(k_p), pool(v_p), jnp.full((groups,), math.log(g), jnp.float32), None
        wts = valid_p.reshape(b, 1, groups, g, 1).astype(jnp.float32)
        count = wts.sum(axis=3)  # (B, 1, groups, 1)
        pool = lambda x: ((x.reshape(b, nh, groups, g, x.shape[-1]) * wts).sum(axis=3)
                          / jnp.maximum(count, 1))
        count_bg = count[:, 0, :, 0]
        const = jnp.log(jnp.maximum(count_bg, 1.0))
        return pool(k_p), pool(v_p), const, count_bg > 0
