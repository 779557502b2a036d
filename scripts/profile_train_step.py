#!/usr/bin/env python
"""Where a train step's time goes: the compiled step timed, then one step traced with
`jax.profiler` and its XLA ops ranked by time (with the HLO of the slowest ones).

    python scripts/profile_train_step.py [--variant tiny] [--batch 8] [--frames 4]
        [--objects 3] [--conv_impl xla|matmul] [--override KEY=VALUE ...] [--steps 3]
        [--memory_segments N] [--top 20] [--trace_dir DIR]

Synthetic batch (boxes moving over noise), GT-mask prompt plan (no correction clicks), float32,
no remat, one device. Prints the compile time, the median step time, and a table of the `--top`
ops of one traced step (total ms, calls, HLO instruction); the trace itself stays in
--trace_dir for TensorBoard / Perfetto. This is how the `conv_impl` switch was found: with
"xla", four convolution weight gradients of the memory encoder were ~60 % of a CPU step.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.evaluate import _parse_override  # noqa: E402  (KEY=VALUE, value as a literal)


def synthetic_batch(size: int, b: int, t: int, o: int, seed: int = 0) -> dict:
    """images (B, T, S, S, 3) uint8 noise with one coloured box per object that moves from
    frame to frame; masks (B, T, O, S, S) bool of those boxes; every object valid."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(b, t, size, size, 3), dtype=np.uint8)
    masks = np.zeros((b, t, o, size, size), bool)
    side = max(size // 5, 4)
    for i in range(b):
        for k in range(o):
            y0, x0 = rng.integers(0, size - side - t * 3, size=2)
            for f in range(t):
                y, x = y0 + 3 * f, x0 + 2 * f
                masks[i, f, k, y:y + side, x:x + side] = True
                images[i, f, y:y + side, x:x + side] = (200, 60 * k % 255, 90)
    return {"images": images, "masks": masks, "obj_valid": np.ones((b, o), bool)}


def op_table(trace_dir: Path, top: int) -> list[tuple[str, float, int]]:
    """(op name, total ms, calls) of the XLA ops in the newest trace under trace_dir."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no trace written under {trace_dir}")
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        # skip the Python / runtime spans, keep HLO instructions
        if e.get("ph") != "X" or name.startswith("$") or "::" in name or "(" in name:
            continue
        total[name] += e.get("dur", 0) / 1e3
        calls[name] += 1
    return [(k, v, calls[k]) for k, v in total.most_common(top)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--variant", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--conv_impl", choices=("xla", "matmul"), default="matmul")
    p.add_argument("--override", action="append", default=[], type=_parse_override,
                   metavar="KEY=VALUE",
                   help="dotted model config override, e.g. vit.patch_size=8; repeatable")
    p.add_argument("--memory_segments", type=int, default=0,
                   help="train.memory_segments: scans over only the memory frames each can have")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--trace_dir", default=None, help="default: a temporary directory")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from tam_jax import configs
    from tam_jax.models.tam import init_params
    from tam_jax.training import optimizer, prompts
    from tam_jax.training.train_step import StepConfig, create_train_state, make_train_step

    t = args.frames
    kind = prompts.PlanKind(point_input=False, init_prompts=("mask",), corrections=0)
    order, corrected = jnp.arange(t, dtype=jnp.int32), jnp.zeros((t,), bool)
    cfg = configs.for_training(configs.get_config(
        args.variant, **{"conv_impl": args.conv_impl, **dict(args.override)}))
    opt_cfg = optimizer.OptimizerConfig(lr=1e-3, lr_image_encoder=1e-3, schedule="constant",
                                        warmup_steps=0, total_steps=100, layer_decay=1.0)
    params = init_params(cfg, 0)
    opt = optimizer.make_optimizer(opt_cfg, params, cfg)
    step = jax.jit(make_train_step(StepConfig(model=cfg, optimizer=opt_cfg, dropout=False,
                                              memory_segments=args.memory_segments),
                                   opt, kind), donate_argnums=0)
    state = create_train_state(params, opt, seed=0)
    batch = jax.tree.map(jnp.asarray, synthetic_batch(cfg.image_size, args.batch, t,
                                                      args.objects))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, order, corrected).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch, order, corrected)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, order, corrected)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="tam_jax_trace_"))
    jax.profiler.start_trace(str(trace_dir))
    state, m = compiled(state, batch, order, corrected)
    jax.block_until_ready(m)
    jax.profiler.stop_trace()
    rows = op_table(trace_dir, args.top)
    hlo = compiled.as_text()

    def instruction(name: str) -> str:
        match = re.search(r"^\s*%?" + re.escape(name) + r" = (.*)$", hlo, re.M)
        return match.group(1)[:110] if match else ""

    extra = "".join(f", {k}={v}" for k, v in args.override)
    extra += f", memory_segments={args.memory_segments}" if args.memory_segments else ""
    print(f"{cfg.name} conv_impl={args.conv_impl}{extra}, batch {args.batch} x {t} frames x "
          f"{args.objects} objects at {cfg.image_size} px on {jax.devices()[0].platform}")
    print(f"compile {compile_s:.1f} s; step median {step_s:.3f} s over {args.steps} "
          f"({', '.join(f'{x:.3f}' for x in times)})")
    print(f"\n{'ms':>9} {'calls':>6}  op  (one traced step; trace in {trace_dir})")
    for name, ms, n in rows:
        print(f"{ms:9.1f} {n:6d}  {name}: {instruction(name)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "variant": cfg.name, "conv_impl": args.conv_impl,
            "overrides": dict(args.override), "memory_segments": args.memory_segments,
            "batch": args.batch,
            "frames": t, "objects": args.objects, "compile_s": compile_s, "step_s": step_s,
            "step_times_s": times, "top_ops": [{"op": n, "ms": ms, "calls": c}
                                               for n, ms, c in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
