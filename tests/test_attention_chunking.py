"""Query-chunked attention (`tam_jax.models.attention.attend`): same values and gradients as
the unchunked softmax, and a backward pass whose memory follows the chunk, not N x M.

The memory test is what keeps the paper's training setting on a 16 GB TPU chip: without a
checkpointed chunk body, the backward of `lax.map` stacks every chunk's float32 probabilities
(3.8x one float32 (N, M) matrix: half of the unchunked gradient's temporaries, not the
chunk's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tam_jax.models import attention


def _inputs(b=2, h=2, n=512, m=384, d=16, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(ks[0], (b, h, n, d), dtype)
    k = jax.random.normal(ks[1], (b, h, m, d), dtype)
    v = jax.random.normal(ks[2], (b, h, m, d), dtype)
    bias = jax.random.normal(ks[3], (b, m), jnp.float32)
    valid = jax.random.bernoulli(ks[4], 0.8, (b, m)).at[:, 0].set(True)
    return q, k, v, bias, valid


def _loss(chunk, rate=0.0):
    def f(q, k, v, bias, valid, rng):
        out = attention.attend(q, k, v, logit_bias_bm=bias, key_valid_bm=valid,
                               dropout_rate=rate, dropout_rng=rng if rate else None,
                               query_chunk=chunk)
        return jnp.sum(jnp.sin(out.astype(jnp.float32)))
    return f


def test_chunked_values_and_gradients_equal_the_unchunked_ones():
    q, k, v, bias, valid = _inputs()
    rng = jax.random.key(1)
    full = jax.value_and_grad(_loss(10**9), argnums=(0, 1, 2))(q, k, v, bias, valid, rng)
    chunked = jax.value_and_grad(_loss(64), argnums=(0, 1, 2))(q, k, v, bias, valid, rng)
    np.testing.assert_allclose(chunked[0], full[0], rtol=1e-5)
    for g_c, g_f in zip(chunked[1], full[1], strict=True):
        np.testing.assert_allclose(g_c, g_f, rtol=1e-4, atol=1e-5)


def test_chunked_dropout_gradient_reuses_each_chunks_mask():
    """The rematerialised chunk redraws its dropout mask from the same key: the gradient equals
    that of the same chunks computed one by one, each with its own key and no checkpoint."""
    q, k, v, bias, valid = _inputs(n=256)
    rng, chunk, rate = jax.random.key(2), 64, 0.3
    grads = jax.grad(_loss(chunk, rate), argnums=(0, 1, 2))(q, k, v, bias, valid, rng)

    def by_hand(q, k, v):
        keys = jax.random.split(rng, q.shape[2] // chunk)
        total = 0.0
        for i in range(q.shape[2] // chunk):
            out = attention.attend(q[:, :, i * chunk:(i + 1) * chunk], k, v, logit_bias_bm=bias,
                                   key_valid_bm=valid, dropout_rate=rate, dropout_rng=keys[i],
                                   query_chunk=10**9)
            total = total + jnp.sum(jnp.sin(out))
        return total

    expected = jax.grad(by_hand, argnums=(0, 1, 2))(q, k, v)
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    # and dropout did act: without it the gradient differs
    plain = jax.grad(_loss(chunk), argnums=0)(q, k, v, bias, valid, rng)
    assert not np.allclose(plain, grads[0], atol=1e-3)


def test_chunked_backward_memory_follows_the_chunk():
    """XLA's temporaries for the gradient: with 256 queries at a time they stay flat as N
    doubles, and far below those of the unchunked (N, M) softmax. Before the chunk body was
    checkpointed, the chunked gradient needed 0.52x of the unchunked one at N = 4096 and grew
    with N (all chunks' residuals stacked); now ~0.07x there, a constant ~9 chunk-sized
    buffers."""
    b, h, m, d = 3, 1, 4096, 64

    def temp_bytes(n, chunk):
        shapes = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in
                  ((b, h, n, d), (b, h, m, d), (b, h, m, d))]

        def loss(q, k, v, rng):
            out = attention.attend(q, k, v, dropout_rate=0.1, dropout_rng=rng, query_chunk=chunk)
            return jnp.sum(out.astype(jnp.float32) ** 2)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
            *shapes, jax.random.key(0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full = temp_bytes(2048, 10**9)
    chunked_1k, chunked_2k = temp_bytes(1024, 256), temp_bytes(2048, 256)
    assert full > b * h * 2048 * m * 4  # the reference really materialises the softmax
    assert chunked_2k < 0.2 * full, (chunked_2k, full)
    assert chunked_2k < 1.25 * chunked_1k, (chunked_1k, chunked_2k)


def test_batch_loop_equals_the_batched_attention():
    """`attention_batch_loop` (the video predictor's on CPU): the memory cross-attention of
    several objects one object at a time gives the batched result, with per-object key masks
    and logit biases, chunked or not; shorter attentions (self-attention) keep the batch."""
    m = attention.BATCH_LOOP_MIN_KEYS
    q, k, v, bias, valid = _inputs(b=3, h=1, n=512, m=m)
    for chunk in (256, 10**9):
        batched = attention.attend(q, k, v, bias, valid, query_chunk=chunk)
        with attention.batch_looping(True):
            looped = jax.jit(lambda *a, c=chunk: attention.attend(*a, query_chunk=c))(
                q, k, v, bias, valid)
            text = jax.make_jaxpr(lambda *a: attention.attend(*a))(q, k, v, bias, valid)
            short = jax.make_jaxpr(lambda *a: attention.attend(*a))(
                q, k[:, :, :m - 1], v[:, :, :m - 1], bias[:, :m - 1], valid[:, :m - 1])
        np.testing.assert_allclose(looped, batched, atol=1e-6, rtol=1e-6)
    # the loop is there (a scan over the 3 objects) for >= BATCH_LOOP_MIN_KEYS keys only
    lengths = lambda jaxpr: [e.params["length"] for e in jaxpr.jaxpr.eqns
                             if e.primitive.name == "scan"]
    assert 3 in lengths(text)
    assert 3 not in lengths(short)
    assert attention._batch_loop is False  # restored
