"""The memory-attention cost model: analytic FLOPs = the program's matmuls = XLA's count
(within its elementwise extra), and pooling removes the keys it should."""

import pytest

from tam_jax import memory_cost
from tam_jax.configs import get_config
from tam_jax.models import attention

CA = "memory_attention.cross_attention."


@pytest.mark.parametrize("overrides", [
    {CA + "pool_window": 1},
    {CA + "pool_window": 2},
    {CA + "pool_window": 2, CA + "pool_pointer_tokens": True},
    {CA + "pool_window": 4, CA + "log_area_constant": "keys", "num_maskmem": 3},
    {CA + "pool_window": 2, "image_size": 64},
])
def test_analytic_flops_equal_the_traced_matmuls_and_xla_adds_only_elementwise_work(overrides):
    cfg = get_config("tiny", **overrides)
    analytic = memory_cost.analytic_flops(cfg)
    assert analytic["total"] == sum(v for k, v in analytic.items() if k != "total")
    assert memory_cost.jaxpr_matmul_flops(cfg) == analytic["total"]
    xla = memory_cost.xla_cost(cfg)["flops"]
    # XLA also counts softmax, RoPE, norms and pooling: a few percent on top, never less
    assert analytic["total"] <= xla <= 1.15 * analytic["total"]


def test_full_bank_and_attended_keys():
    cfg = get_config("tiny")  # 128 px: 8 x 8 grid; hidden 64 / mem 16 = 4 tokens per pointer
    bank = memory_cost.full_bank(cfg)
    assert (bank.queries, bank.memory_frames, bank.pointer_tokens) == (64, 7, 64)
    assert memory_cost.attended_keys(get_config("tiny_full")) == 7 * 64 + 64
    assert memory_cost.attended_keys(cfg) == 7 * 64 // 4 + 64
    ptr = get_config("tiny", **{CA + "pool_pointer_tokens": True})
    assert memory_cost.attended_keys(ptr) == 7 * 64 // 4 + 64 // 4
    w4 = get_config("tiny", **{CA + "pool_window": 4, "num_maskmem": 3})
    assert memory_cost.attended_keys(w4) == 3 * 64 // 16 + 64
    one_frame = memory_cost.BankShape(queries=64, memory_frames=1, pointer_tokens=64)
    assert memory_cost.attended_keys(cfg, one_frame) == 128  # pooling needs >= 2 frames
    no_ptr = get_config("tiny", use_obj_ptrs_in_encoder=False)
    assert memory_cost.full_bank(no_ptr).pointer_tokens == 0


def test_released_figures_at_1024_match_the_papers_scale():
    """efficienttam_s at 1024: 64 x 64 queries over 7 x 4096 + 64 memory tokens; the
    cross-attention core dominates and 2 x 2 pooling divides it by ~4 (peers_and_users.md
    TL;DR: ~0.6 TFLOP full, ~0.24 with pooling, estimated there)."""
    full = memory_cost.analytic_flops(get_config("efficienttam_s"))
    pooled = memory_cost.analytic_flops(get_config("efficienttam_s_1"))
    assert memory_cost.full_bank(get_config("efficienttam_s")).memory_tokens == 7 * 4096 + 64
    assert 0.5e12 < full["total"] < 0.7e12
    assert 0.2e12 < pooled["total"] < 0.3e12
    ratio = full["cross_attention_core"] / pooled["cross_attention_core"]
    assert 3.9 < ratio < 4.0


def test_query_chunking_context_restores_the_default():
    assert attention._query_chunk == attention.QUERY_CHUNK
    with attention.query_chunking(None):
        assert attention._query_chunk > 10**9
    with pytest.raises(RuntimeError), attention.query_chunking(64):
        assert attention._query_chunk == 64
        raise RuntimeError
    assert attention._query_chunk == attention.QUERY_CHUNK


def test_cost_summary_and_timing():
    out = memory_cost.memory_attention_cost(get_config("tiny"), timing_repeats=2)
    assert out["pool_window"] == 2 and out["attended_keys"] == 176
    assert out["analytic_gflops"] == pytest.approx(22544384 / 1e9)
    assert out["xla_gflops"] >= out["analytic_gflops"]
    assert 0 < out["latency_min_ms"] <= out["latency_ms"] <= out["latency_max_ms"]
