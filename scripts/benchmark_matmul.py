#!/usr/bin/env python
"""This machine's XLA matmul rates: what `EfficientTAMConfig.matmul_precision` and
`attention_batch_loop` are chosen from (docs/benchmarks.md, "bf16 matmul operands").

Square n x n @ n x n products, float32 and with bf16 operands (float32 result, as
`matmul_precision="bfloat16"` traces them; and bf16 result, as a bf16 compute dtype does),
then the memory cross-attention's core (`attention.attend`: 1024 queries over 7232 keys of
width 256 per tracked object, the 512 models' full memory) for 1, 4 and 16 objects, batched
and looped over the objects (`attention_batch_loop`). GFLOP/s medians, a table and JSON.

    python scripts/benchmark.py matmul [--n 2048] [--repeats 7] [--objects 1 4 16]
        [--json artifacts/benchmark_matmul.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

QUERIES, KEYS, DIM = 1024, 7232, 256  # the 512 models' memory attention, full memory


def _median_s(fn, repeats: int) -> float:
    """Median seconds per call of `fn` after two untimed calls (compiles, warm-up)."""
    from scripts.benchmark_train import _median_time

    return statistics.median(_median_time(fn, repeats, warmup=2))


def square_rates(n: int, repeats: int) -> dict:
    """GFLOP/s of an n^3 product: float32, bf16 operands -> float32, bf16 -> bf16."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    ab = a.astype(jnp.bfloat16)
    cases = {
        "float32": (jax.jit(jnp.dot), a),
        "bf16 operands, float32 result": (
            jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)), ab),
        "bf16 operands, bf16 result": (jax.jit(jnp.dot), ab),
    }
    return {name: 2 * n**3 / 1e9 / _median_s(lambda f=f, x=x: f(x, x).block_until_ready(),
                                               repeats)
            for name, (f, x) in cases.items()}


def attention_rates(objects: list[int], repeats: int) -> dict:
    """GFLOP/s (of its two matmuls) of the memory cross-attention core, `attend` with the 512
    models' full memory (1024 queries, 7232 keys, width 256, query chunks of 256), for each
    object count, float32 and bf16 operands, batched and with `attention_batch_loop`."""
    import jax
    import jax.numpy as jnp

    from tam_jax.models import attention, layers

    out = {}
    for b in objects:
        ks = jax.random.split(jax.random.key(b), 3)
        q = jax.random.normal(ks[0], (b, 1, QUERIES, DIM), jnp.float32)
        k = jax.random.normal(ks[1], (b, 1, KEYS, DIM), jnp.float32)
        v = jax.random.normal(ks[2], (b, 1, KEYS, DIM), jnp.float32)
        gflop = 2 * 2 * b * QUERIES * KEYS * DIM / 1e9
        for precision in ("float32", "bfloat16"):
            for how, loop in (("batched", False), ("loop", True)):
                with layers.matmul_precision(precision), attention.batch_looping(loop):
                    f = jax.jit(lambda q, k, v: attention.attend(q, k, v))
                    f(q, k, v).block_until_ready()  # traced (and compiled) in the context
                t = _median_s(lambda f=f, q=q, k=k, v=v: f(q, k, v).block_until_ready(),
                              repeats)
                out[f"{b} objects {precision} {how}"] = gflop / t
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmark.py matmul", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048, help="side of the square product")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per case")
    p.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16],
                   help="object counts of the attention-shaped products")
    p.add_argument("--json", default="artifacts/benchmark_matmul.json", help="output")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import jax

    from scripts.machine_info import cpu_model

    args = parse_args(argv)
    square = square_rates(args.n, args.repeats)
    attn = attention_rates(args.objects, max(1, min(args.repeats, 3)))  # ~1 s per call at 16
    meta = {"machine": cpu_model(), "jax": jax.__version__, "backend": jax.default_backend(),
            "n": args.n, "repeats": args.repeats,
            "command": "python scripts/benchmark.py matmul " + " ".join(
                sys.argv[2:] if argv is None else argv)}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "square_gflops": square,
                               "attention_gflops": attn}, indent=2))
    print(f"\n{'square ' + str(args.n) + '^3':<34}{'GFLOP/s':>9}")
    for name, r in square.items():
        print(f"{name:<34}{r:>9.0f}")
    print(f"\nattend, {QUERIES} x {KEYS} x {DIM} per object  batched    loop   (GFLOP/s)")
    for b in args.objects:
        for dtype in ("float32", "bfloat16"):
            print(f"{f'{b} objects, {dtype}':<34}{attn[f'{b} objects {dtype} batched']:>9.0f}"
                  f"{attn[f'{b} objects {dtype} loop']:>8.0f}")
    print(f"\nmachine: {meta['machine']}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
