"""The jaxpr FLOP counter (`tam_jax.flops`) on hand-computed cases; scripts/benchmark_train.py's
measuring pieces; and (marked slow) the script at its tiniest settings: the CPU part runs and
its JSON holds positive, finite FLOPs, times and ratios; the TPU part (ahead of time) runs only
where libtpu is importable (not on CI)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scripts import benchmark_train
from tam_jax import aot
from tam_jax.flops import count_flops

TINIEST_CPU = ["--skip-tpu", "--micro", "--cpu-batch", "1", "--cpu-objects", "1",
               "--cpu-steps", "1", "--cpu-warmup", "1", "--no-cpu-breakdown", "--peak-n", "256",
               "--peak-repeats", "2"]
NHWC = ("NHWC", "HWIO", "NHWC")


def flops(f, *args) -> tuple[int, int, int]:
    got = count_flops(jax.make_jaxpr(f)(*args))
    return got["flops_low"], got["flops_high"], got["while_loops_counted_once"]


def real_taps(conv, x_shape, w_shape) -> int:
    """(output position, kernel tap) pairs that read a real input element, computed directly:
    a single-channel convolution of ones by ones sums, at each output, the taps that land on
    an input element (padding and the zeros of lhs dilation add nothing)."""
    x1 = jnp.ones((1, *x_shape[1:-1], 1))  # one image, one channel
    w1 = jnp.ones((*w_shape[:-2], 1, 1))
    return int(np.asarray(conv(x1, w1, 1)).sum())


def test_flops_dot_general():
    a, b = jnp.ones((7, 5)), jnp.ones((5, 3))
    assert flops(jnp.matmul, a, b) == (2 * 7 * 5 * 3,) * 2 + (0,)
    q, k = jnp.ones((2, 4, 9, 8)), jnp.ones((2, 4, 6, 8))  # (batch, heads, tokens, dim)
    logits = lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k)
    assert flops(logits, q, k)[1] == 2 * (2 * 4 * 9 * 6) * 8


@pytest.mark.parametrize("name,conv,w_shape,groups", [
    ("valid", lambda x, w, g: jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=NHWC), (3, 3, 6, 8), 1),
    ("same, stride 2", lambda x, w, g: jax.lax.conv_general_dilated(
        x, w, (2, 2), "SAME", dimension_numbers=NHWC), (3, 3, 6, 8), 1),
    ("window dilation 2", lambda x, w, g: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC), (3, 3, 6, 8), 1),
    ("3 groups", lambda x, w, g: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=g), (3, 3, 2, 9), 3),
    ("depthwise 7x7", lambda x, w, g: jax.lax.conv_general_dilated(
        x, w, (1, 1), ((3, 3), (3, 3)), dimension_numbers=NHWC, feature_group_count=g),
     (7, 7, 1, 6), 6),
    ("transposed k2 s2", lambda x, w, g: jax.lax.conv_transpose(
        x, w, (2, 2), "VALID", dimension_numbers=NHWC), (2, 2, 6, 4), 1),
    ("transposed k3 s2 same", lambda x, w, g: jax.lax.conv_transpose(
        x, w, (2, 2), "SAME", dimension_numbers=NHWC), (3, 3, 6, 4), 1),
])
def test_flops_conv(name, conv, w_shape, groups):
    """2 x real taps x batch x (input features per group) x output features; lhs dilation's
    zeros and padding are not multiply-adds. XLA's own count agrees."""
    x = jnp.ones((2, 9, 11, 6))
    w = jnp.ones(w_shape)
    f = lambda x, w: conv(x, w, groups)
    want = 2 * real_taps(conv, x.shape, w.shape) * 2 * (6 // groups) * w_shape[-1]
    assert flops(f, x, w) == (want, want, 0), name
    cost = jax.jit(f).lower(x, w).cost_analysis()
    assert (cost[0] if isinstance(cost, list | tuple) else cost)["flops"] == want, name


def test_flops_transposed_conv_by_hand():
    """Kernel 2, stride 2: every input element meets every tap exactly once, and the output has
    4x the positions: counting the inserted zeros would give 4x too many."""
    x, w = jnp.ones((2, 9, 11, 6)), jnp.ones((2, 2, 6, 4))
    f = lambda x, w: jax.lax.conv_transpose(x, w, (2, 2), "VALID", dimension_numbers=NHWC)
    macs = (2 * 9 * 11) * (2 * 2) * 6 * 4  # input positions x taps x Cin x Cout
    assert f(x, w).shape == (2, 18, 22, 4)
    assert flops(f, x, w)[1] == 2 * macs


def test_flops_scan_cond_while():
    a = jnp.ones((8, 8))
    mm = 2 * 8**3

    def f(a, corrected, n):
        x = jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=5)[0]  # 5 matmuls
        # a scan of 3 inside a scan of 2: 6 more
        inner = lambda c, _: (jax.lax.scan(lambda d, _: (d @ a, None), c, None, length=3)[0],
                              None)
        x = jax.lax.scan(inner, x, None, length=2)[0]
        x = jax.lax.cond(corrected, lambda: x @ x @ x, lambda: x)  # 0 or 2 more
        return jax.lax.fori_loop(0, n, lambda i, c: c @ a, x)  # dynamic: body once

    assert flops(f, a, True, 3) == (12 * mm, 14 * mm, 1)


def test_flops_jit_remat_custom_derivatives():
    a = jnp.ones((8, 8))
    mm = 2 * 8**3
    two = lambda x: (x @ a) @ a
    assert flops(jax.jit(two), a)[1] == 2 * mm  # a nested jit (pjit) is walked into

    @jax.custom_jvp
    def cj(x):
        return x @ a

    cj.defjvp(lambda p, t: (cj(p[0]), t[0] @ a))
    assert flops(cj, a)[1] == mm
    # loss and gradient w.r.t. x of sum(sin(x a) a): 2 forward + 2 backward matmuls; remat
    # recomputes x a (the backward needs cos(x a)), not the last product (nothing needs it)
    block = lambda x: jnp.sin(x @ a) @ a
    plain = flops(jax.value_and_grad(lambda x: jnp.sum(block(x))), a)[1]
    remat = flops(jax.value_and_grad(lambda x: jnp.sum(jax.checkpoint(block)(x))), a)[1]
    assert (plain, remat) == (4 * mm, 5 * mm)


def test_parse_hbm_error():
    msg = "RESOURCE_EXHAUSTED: ... Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G."
    got = aot.parse_hbm_error(msg)
    assert got["total"] == pytest.approx(20.5 * 2**30) and not got["fits"]
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (21.45G) exceeds available HBM (15.75G).")
    got = aot.parse_hbm_error(msg)
    assert got == {"temp": pytest.approx(21.45 * 2**30), "capacity": pytest.approx(15.75 * 2**30),
                   "fits": False}
    assert aot.parse_hbm_error("some other error") is None


def test_last_result_line():
    """A case's child prints its trace-time figures, then its final ones; a timed-out child's
    captured output is bytes."""
    mark = benchmark_train.RESULT_MARK
    out = f"log\n{mark}{json.dumps({'flops_high': 1})}\nmore\n{mark}{json.dumps({'flops_high': 2})}"
    assert aot.last_result(out, mark) == {"flops_high": 2}
    assert aot.last_result(out.encode()[:out.rindex(mark)], mark) == {"flops_high": 1}
    assert aot.last_result(None, mark) is None


def test_timed_jit_and_matmul_peak():
    """The CPU part's measuring pieces on a scan of 4 matmuls (seconds, not a model compile)."""
    a = jnp.ones((64, 64))
    f = lambda x, a: jax.lax.scan(lambda c, _: (c @ a, None), x, None, length=4)[0]
    res = benchmark_train._timed_jit(f, (a, a), steps=2, warmup=1)
    assert res["flops_low"] == res["flops_high"] == 4 * 2 * 64**3
    assert len(res["samples_s"]) == 2 and res["median_s"] > 0
    assert res["flops_per_s"] == pytest.approx(res["flops_high"] / res["median_s"])
    assert res["xla_flops"] >= 2 * 64**3  # XLA: the loop body once (plus its loop bookkeeping)
    peak = benchmark_train.matmul_peak(64, repeats=2)
    assert peak["flops"] == 2 * 64**3 and len(peak["samples_s"]) == 2


@pytest.mark.slow  # compiles a (micro) train step: minutes of XLA:CPU on 2 cores
def test_benchmark_train_cpu_tiny(tmp_path):
    from scripts import benchmark

    out = tmp_path / "bench.json"
    assert benchmark.main(["train", *TINIEST_CPU, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["tpu"] is None and data["tpu_skipped"] == "--skip-tpu"
    cpu = data["cpu"]
    assert cpu["config"]["variant"] == "tiny" and cpu["config"]["micro"]
    assert cpu["matmul_peak"]["flops_per_s"] > 0
    step = cpu["train_step"]
    for key in ("flops_low", "flops_high", "xla_flops", "median_s", "flops_per_s",
                "ratio_to_peak"):
        assert math.isfinite(step[key]) and step[key] > 0, (key, step[key])
    # conds (the pooled memory attention's full-attention fallback) can only add
    assert step["flops_low"] <= step["flops_high"]
    # XLA counts each loop body once (and elementwise work): the jaxpr count is not below it
    # by much; the frame scan alone makes it larger
    assert step["flops_high"] > 0.5 * step["xla_flops"]
    assert "command" in data["meta"] and data["meta"]["jax"] == jax.__version__


@pytest.mark.slow
def test_benchmark_train_tpu_aot_tiny(tmp_path):
    if not benchmark_train.libtpu_available(None):
        pytest.skip("libtpu is not importable: no ahead-of-time TPU compile here")
    out = tmp_path / "bench.json"
    rc = benchmark_train.main(["--skip-cpu", "--micro", "--variants", "tiny", "--resolution",
                               "128", "--frames", "2", "--objects", "2", "--remats", "none",
                               "--remat-frames", "off", "--plan", "mask", "--skip-image",
                               "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["tpu"]
    res = row["result"]
    assert "error" not in res, res["error"]
    assert res["chips"] == 4 and res["memory"]["fits"] and res["memory"]["total"] > 0
    assert res["flops_high_per_chip"] > 0


def test_a_child_killed_by_sigkill_is_named(tmp_path):
    """The out-of-memory killer ends a compile with SIGKILL mid-log: the error says so (not the
    child's last log line), and the figures it printed before are kept."""
    script = tmp_path / "child.py"
    script.write_text("import os, signal, sys\n"
                      "print('MARK{\"flops_high\": 3}', flush=True)\n"
                      "print('libtpu_init_utils.cc:327 log', file=sys.stderr, flush=True)\n"
                      "os.kill(os.getpid(), signal.SIGKILL)\n")
    res = aot.run_in_child(script, {}, timeout=120, mark="MARK")
    assert res["flops_high"] == 3
    assert res["error"].startswith("killed by SIGKILL") and "out-of-memory killer" in res["error"]
    assert "libtpu_init_utils" in res["stderr_tail"]
