"""What memory pooling buys: the memory attention's FLOPs and latency per frame, full bank.

Paper §3.2: average-pooling the spatial memory keys / values in p x p windows divides the
cross-attention's key count by p^2. This module prices one frame's memory attention (all
layers, one object) for any config, three ways:

- `analytic_flops`: 2 x multiply-adds of every matmul, from the shapes (below);
- `jaxpr_matmul_flops`: the same count read off the traced program (`tam_jax/flops.py`), which
  checks the formula (tests/test_memory_cost.py holds them equal);
- `xla_cost`: XLA's `cost_analysis()` of the compiled memory attention (its "flops" also
  counts elementwise work: softmax, RoPE, norms, pooling), traced with query chunking off so
  that no loop hides FLOPs (XLA counts a loop body once);
- `time_memory_attention`: median wall time of the compiled memory attention on this machine.

The "full" bank is the official steady state of tracking with one prompted frame: that frame
plus `num_maskmem - 1` recent frames of memory (F = num_maskmem frames of h*w tokens) and
`max_obj_ptrs_in_encoder` object pointers, each split into hidden_dim / mem_dim tokens.

Analytic count, per layer (N = h*w queries, d = d_model, c = kv_in_dim, f = dim_feedforward,
M = F*N + P memory tokens, K = F*N/p^2 + P' keys after pooling, P' = P/p^2 when pointer tokens
are pooled else P):
    self-attention   4 * 2Nd^2 (q, k, v, out projections) + 2 * 2N^2 d (scores, values)
    cross-attention  2 * 2Nd^2 (q, out) + 2 * 2Mcd (k, v of every memory token, before
                     pooling) + 2 * 2NKd (scores, values over the pooled keys)
    MLP              2 * 2Ndf

    python -c "from tam_jax import memory_cost as m, configs as c; \
        print(m.analytic_flops(c.get_config('efficienttam_s_1')))"
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from tam_jax import flops
from tam_jax.configs import EfficientTAMConfig
from tam_jax.models import attention
from tam_jax.models.memory_attention import MemoryAttention


@dataclasses.dataclass(frozen=True)
class BankShape:
    """Token counts of a full memory bank: queries N, spatial memory F*N, pointer tokens P."""

    queries: int
    memory_frames: int
    pointer_tokens: int

    @property
    def spatial(self) -> int:
        return self.memory_frames * self.queries

    @property
    def memory_tokens(self) -> int:
        return self.spatial + self.pointer_tokens


def full_bank(cfg: EfficientTAMConfig) -> BankShape:
    """The bank of steady-state tracking: one conditioning frame + num_maskmem - 1 recent
    frames, and max_obj_ptrs_in_encoder pointers (none when pointers are off)."""
    pointers = cfg.max_obj_ptrs_in_encoder if cfg.use_obj_ptrs_in_encoder else 0
    return BankShape(queries=cfg.feat_size**2, memory_frames=cfg.num_maskmem,
                     pointer_tokens=pointers * (cfg.hidden_dim // cfg.mem_dim))


def attended_keys(cfg: EfficientTAMConfig, bank: BankShape | None = None) -> int:
    """Keys each query attends to after pooling (as the model does: no pooling with fewer
    than two memory frames)."""
    bank = bank or full_bank(cfg)
    ca = cfg.memory_attention.cross_attention
    p2 = ca.pool_window**2
    if ca.pool_window == 1 or bank.memory_frames < 2:
        return bank.memory_tokens
    ptr = bank.pointer_tokens // p2 if ca.pool_pointer_tokens else bank.pointer_tokens
    return bank.spatial // p2 + ptr


def analytic_flops(cfg: EfficientTAMConfig, bank: BankShape | None = None) -> dict[str, int]:
    """Matmul FLOPs of one frame's memory attention (one object), by part and in total."""
    bank = bank or full_bank(cfg)
    ma = cfg.memory_attention
    n, d, c, f = bank.queries, ma.d_model, ma.kv_in_dim, ma.dim_feedforward
    m, k = bank.memory_tokens, attended_keys(cfg, bank)
    layers = ma.num_layers
    parts = {
        "self_attention": layers * (4 * 2 * n * d * d + 2 * 2 * n * n * d),
        "cross_projections": layers * (2 * 2 * n * d * d + 2 * 2 * m * c * d),
        "cross_attention_core": layers * (2 * 2 * n * k * d),
        "mlp": layers * 2 * 2 * n * d * f,
    }
    parts["total"] = sum(parts.values())
    return parts


def _inputs(cfg: EfficientTAMConfig, bank: BankShape, seed: int = 0):
    """Random current-frame tokens and a full, all-valid memory (batch 1)."""
    rng = np.random.default_rng(seed)
    d, c = cfg.memory_attention.d_model, cfg.mem_dim
    arr = lambda *shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    return (arr(1, bank.queries, d), arr(1, bank.queries, d),
            arr(1, bank.memory_tokens, c), arr(1, bank.memory_tokens, c))


@functools.lru_cache(maxsize=2)  # the XLA cost and the timing of one config share the inputs
def _apply_fn(cfg: EfficientTAMConfig, bank: BankShape):
    module = MemoryAttention(cfg)
    curr, pos, mem, mem_pos = _inputs(cfg, bank)
    params = module.init(jax.random.PRNGKey(0), curr, pos, mem, mem_pos,
                         num_obj_ptr_tokens=bank.pointer_tokens)

    def fn(params, curr, pos, mem, mem_pos):
        return module.apply(params, curr, pos, mem, mem_pos,
                            num_obj_ptr_tokens=bank.pointer_tokens)

    return fn, (params, curr, pos, mem, mem_pos)


def jaxpr_matmul_flops(cfg: EfficientTAMConfig, bank: BankShape | None = None) -> int:
    """Matmul FLOPs of one frame's memory attention counted on its jaxpr (loops unrolled)."""
    bank = bank or full_bank(cfg)
    fn, args = _apply_fn(cfg, bank)
    counted = flops.count_flops(jax.jit(fn).trace(*args))
    if counted["flops_low"] != counted["flops_high"]:
        raise AssertionError(f"memory attention has branches of different cost: {counted}")
    return counted["flops_low"]


def xla_cost(cfg: EfficientTAMConfig, bank: BankShape | None = None) -> dict[str, float]:
    """XLA's cost analysis of one frame's compiled memory attention (query chunking off):
    {"flops", "bytes_accessed"} (the backend's figures; CPU here)."""
    bank = bank or full_bank(cfg)
    fn, args = _apply_fn(cfg, bank)
    with attention.query_chunking(None):
        compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {"flops": float(cost.get("flops", float("nan"))),
            "bytes_accessed": float(cost.get("bytes accessed", float("nan")))}


def time_memory_attention(cfg: EfficientTAMConfig, bank: BankShape | None = None,
                          repeats: int = 5) -> dict[str, float]:
    """Wall time of one frame's memory attention (compiled as the model runs it, chunked
    queries included), after one warm-up call: {"median_ms", "min_ms", "max_ms", "repeats"}."""
    bank = bank or full_bank(cfg)
    fn, args = _apply_fn(cfg, bank)
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "repeats": repeats}


def memory_attention_cost(cfg: EfficientTAMConfig, timing_repeats: int = 0) -> dict:
    """Everything above for one config, as a flat JSON-ready dict (timing when repeats > 0)."""
    bank = full_bank(cfg)
    ca = cfg.memory_attention.cross_attention
    out = {
        "image_size": cfg.image_size,
        "pool_window": ca.pool_window,
        "log_area_constant": ca.log_area_constant,
        "pool_pointer_tokens": ca.pool_pointer_tokens,
        "num_maskmem": cfg.num_maskmem,
        "queries": bank.queries,
        "memory_tokens": bank.memory_tokens,
        "attended_keys": attended_keys(cfg, bank),
        "analytic_gflops": analytic_flops(cfg, bank)["total"] / 1e9,
        "xla_gflops": xla_cost(cfg, bank)["flops"] / 1e9,
    }
    if timing_repeats:
        t = time_memory_attention(cfg, bank, timing_repeats)
        out.update(latency_ms=t["median_ms"], latency_min_ms=t["min_ms"],
                   latency_max_ms=t["max_ms"])
    return out
