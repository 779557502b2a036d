#!/usr/bin/env python
"""Benchmark: image encoding + one SAM-head prediction, tam_jax vs the official PyTorch model.

Both run the same converted random weights on the same CPU in one process, alternating
(official, tam_jax, official, ...) after warm-up, so drifts in machine load hit both alike.
One "image step" = set_image (preprocess + ViT + neck) + predict (one click, multimask),
through each project's image predictor. Prints a table (median, spread = IQR / median, ratio
tam_jax / official) and writes JSON.

    python scripts/benchmark.py image [--variants efficienttam_ti_512x512 ...] [--repeats 7]
        [--threads N] [--json artifacts/benchmark_image.json]

Figures go into docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_VARIANTS = ("efficienttam_ti_512x512", "efficienttam_s_512x512", "efficienttam_s")


def _stats(xs):
    xs = sorted(xs)
    q1, med, q3 = (statistics.quantiles(xs, n=4) if len(xs) >= 2 else (xs[0],) * 3)
    return {"median_s": med, "iqr_over_median": (q3 - q1) / med, "min_s": xs[0],
            "samples_s": xs}


def bench_image(variant: str, repeats: int, warmup: int) -> dict:
    import numpy as np
    import torch

    from tam_jax.configs import get_config
    from tam_jax.convert.checkpoint import official_to_params
    from tam_jax.convert.official import (
        build_official_model,
        official_image_predictor,
        randomize_,
    )
    from tam_jax.predictors import ImagePredictor

    cfg = get_config(variant)
    model = build_official_model(cfg, seed=0)
    randomize_(model, seed=0)
    ours = ImagePredictor(cfg, official_to_params(model.state_dict(), cfg))
    theirs = official_image_predictor(model)
    image = (np.random.RandomState(0).rand(480, 640, 3) * 255).astype(np.uint8)
    click = dict(point_coords=np.array([[320.0, 240.0]]), point_labels=np.array([1]))

    def run_ours():
        ours.set_image(image)
        masks, _, _ = ours.predict(**click)
        return masks  # numpy: the device work is finished

    def run_theirs():
        with torch.inference_mode():
            theirs.set_image(image)
            masks, _, _ = theirs.predict(**click)
        return masks

    t0 = time.perf_counter()
    run_ours()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        run_theirs()
        run_ours()
    times = {"tam_jax": [], "official": []}
    for _ in range(repeats):
        for name, fn in (("official", run_theirs), ("tam_jax", run_ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    res = {name: _stats(v) for name, v in times.items()}
    res["ratio_tam_jax_over_official"] = res["tam_jax"]["median_s"] / res["official"]["median_s"]
    res["tam_jax_first_call_s"] = compile_s
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="image", choices=["image"],
                        help="what to time (image: encode + one prediction)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--json", default="artifacts/benchmark_image.json")
    args = parser.parse_args(argv)

    import jax
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for v in args.variants:
        print(f"[benchmark] {v}: building, converting, compiling ...", flush=True)
        results[v] = bench_image(v, args.repeats, args.warmup)
    meta = {
        "what": "set_image + predict(1 click, multimask), 480x640 uint8 image, float32",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "warmup": args.warmup,
        "command": "python scripts/benchmark.py " + " ".join(argv or sys.argv[1:]),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    print(f"\n{'variant':<26}{'official ms':>13}{'tam_jax ms':>12}{'ratio':>8}"
          f"{'spread o/t':>14}{'first call s':>14}")
    for v, r in results.items():
        o_ms, t_ms = r["official"]["median_s"] * 1e3, r["tam_jax"]["median_s"] * 1e3
        print(f"{v:<26}{o_ms:>13.1f}{t_ms:>12.1f}"
              f"{r['ratio_tam_jax_over_official']:>8.2f}"
              f"{r['official']['iqr_over_median']:>7.2f}/{r['tam_jax']['iqr_over_median']:.2f}"
              f"{r['tam_jax_first_call_s']:>14.1f}")
    print(f"\nratio = tam_jax median / official median (target <= 1.0); JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
