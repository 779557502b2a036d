"""FLOPs of a jaxpr: every dot_general and convolution, through loops, branches and calls.

XLA's `cost_analysis()` counts the body of a loop once (a scan of 10 matmuls reports the FLOPs
of one), and a train step is full of loops (the scan over frames, `lax.map` over attention's
query chunks), so its "flops" undercounts. `jaxpr_flops` walks the jaxpr instead:

- dot_general: 2 x output elements x contracted size.
- conv_general_dilated: 2 x the multiply-adds that touch a real input element, as XLA's
  HloCostAnalysis counts them: per spatial dimension, the (output, kernel tap) pairs whose input
  position falls inside the input and not on padding or on a zero that lhs (input) dilation
  inserts (a transposed convolution, the input-gradient of a strided one); times batch, output
  features and kernel input features (feature_group_count is in the kernel's shape already;
  batch_group_count divides the output batch).
- scan: its body times `length`; cond: the cheapest branch for the low figure and the costliest
  for the high one; while: its body once (the trip count is not static: reported, not guessed);
  any other equation holding a jaxpr (jit / pjit, remat, custom_jvp / custom_vjp, closed_call):
  that jaxpr once, so remat's recomputation counts (FLOPs executed, not "model FLOPs").

Elementwise work, reductions and gathers are not counted.
"""

from __future__ import annotations

import math

import numpy as np
from jax.extend import core


def dot_flops(eqn) -> int:
    """2 x output elements x contracted size of a dot_general."""
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contract = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contract


def _valid_taps(in_size: int, kernel: int, out_size: int, stride: int, pad_lo: int,
                lhs_dil: int, rhs_dil: int) -> int:
    """(output, kernel tap) pairs of one spatial dimension that read a real input element."""
    o = np.arange(out_size)[:, None]
    k = np.arange(kernel)[None, :]
    pos = o * stride + k * rhs_dil - pad_lo  # position in the dilated, unpadded input
    real = (pos >= 0) & (pos <= (in_size - 1) * lhs_dil) & (pos % lhs_dil == 0)
    return int(real.sum())


def conv_flops(eqn) -> int:
    """2 x the multiply-adds of a conv_general_dilated that read real input elements."""
    p = eqn.params
    lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
    dn = p["dimension_numbers"]  # specs: (batch, feature, spatial...), kernel (out, in, ...)
    taps = math.prod(
        _valid_taps(lhs.shape[li], rhs.shape[ri], out.shape[oi], stride, lo, ld, rd)
        for li, ri, oi, stride, (lo, _), ld, rd in zip(
            dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:], p["window_strides"],
            p["padding"], p["lhs_dilation"], p["rhs_dilation"], strict=True))
    macs = out.shape[dn.out_spec[0]] * out.shape[dn.out_spec[1]] * rhs.shape[dn.rhs_spec[1]]
    return 2 * macs * taps


def _sub_jaxprs(value) -> list:
    """The jaxprs held by one equation parameter (a jaxpr, a closed one, or a tuple of them)."""
    if isinstance(value, core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, core.Jaxpr):
        return [value]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_flops(jaxpr) -> tuple[int, int, int]:
    """(low, high, while loops) FLOPs of a jaxpr (`core.Jaxpr`, or a ClosedJaxpr's .jaxpr)."""
    low = high = whiles = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            f = dot_flops(eqn) if name == "dot_general" else conv_flops(eqn)
            low, high = low + f, high + f
        elif name == "cond":
            per = [jaxpr_flops(j) for j in _sub_jaxprs(eqn.params["branches"])]
            low += min(p[0] for p in per)
            high += max(p[1] for p in per)
            whiles += max(p[2] for p in per)
        else:
            times = eqn.params["length"] if name == "scan" else 1
            whiles += name == "while"
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    lo, hi, wh = jaxpr_flops(sub)
                    low, high, whiles = low + times * lo, high + times * hi, whiles + wh
    return low, high, whiles


def count_flops(traced) -> dict:
    """FLOPs of a traced jit (`jax.jit(f).trace(*args)`) or a ClosedJaxpr (`jax.make_jaxpr`)."""
    closed = traced if isinstance(traced, core.ClosedJaxpr) else traced.jaxpr
    low, high, whiles = jaxpr_flops(closed.jaxpr)
    return {"flops_low": low, "flops_high": high, "while_loops_counted_once": whiles}
