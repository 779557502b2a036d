"""Compile cost of the training forward + gradient on this machine (XLA:CPU).

    python scripts/benchmark_compile.py [--variant efficienttam_ti_512x512] [--resolution 256]
        [--frames 4] [--objects 2] [--plan click] [--corrections 7]
        [--json artifacts/benchmark_compile.json]

What it measures: `jax.jit(jax.value_and_grad(clip_forward.clip_loss))` for one prompt plan,
timed in its phases: trace + lower to StableHLO (`lower_s`), XLA compile (`compile_s`), the
StableHLO text size (`hlo_chars`, a proxy for what the compiler has to chew through), the
compiled program's temporaries (`temp_mib`), this process's peak RSS (`peak_rss_gib`), and,
as a correctness fingerprint, the loss and the gradient norm of one run. The clip is random
pixels with moving rectangles as objects; random weights (seed 1).

Plans: `click` = a click on frame 0 followed by --corrections correction clicks, frame 2 also
corrected (drawn frames of SAM 2's recipe: clicks are 7 corrections each), the others tracked;
`mask` = frame 0's GT mask, no clicks. Compile time and RSS vary with the machine's load:
compare runs made on the same idle machine. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import resource
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="efficienttam_ti_512x512")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--frames", type=int, default=4, help="clip length T (>= 3)")
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--plan", choices=("click", "mask"), default="click")
    p.add_argument("--corrections", type=int, default=7,
                   help="correction clicks per corrected frame (click plan)")
    p.add_argument("--json", default=None, help="write the result here")
    return p


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    if args.frames < 3:
        raise SystemExit("--frames must be >= 3 (frame 2 is a corrected frame)")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from tam_jax import configs
    from tam_jax.models.tam import init_params
    from tam_jax.training import clip_forward, prompts

    size, t_len, n_obj = args.resolution, args.frames, args.objects
    cfg = configs.for_training(
        dataclasses.replace(configs.get_config(args.variant), image_size=size))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(1, t_len, size, size, 3)).astype(np.float32)
    masks = np.zeros((1, t_len, n_obj, size, size), bool)
    side = max(size // 5, 4)
    for o in range(n_obj):
        for t in range(t_len):  # rectangles moving down-right, one row of objects
            y, x = (size // 8 + o * side // 2 + t * size // 32) % (size - side), \
                (size // 8 + t * size // 24) % (size - side)
            masks[0, t, o, y:y + side, x:x + side] = True
    batch = {"images": jnp.asarray(images), "masks": jnp.asarray(masks),
             "obj_valid": jnp.ones((1, n_obj), bool)}
    if args.plan == "click":
        kind = prompts.PlanKind(True, ("click",), args.corrections)
        corrected = np.zeros(t_len, bool)
        corrected[[0, 2]] = True
    else:
        kind = prompts.PlanKind(False, ("mask",), 0)
        corrected = np.zeros(t_len, bool)
    order = jnp.arange(t_len, dtype=jnp.int32)
    params = init_params(cfg, 1)

    def loss_fn(p):
        return clip_forward.clip_loss(cfg, p, batch, kind, order, jnp.asarray(corrected),
                                      jax.random.key(0), n_obj, deterministic=True)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    print(f"[benchmark compile] {args.variant} {size}px T={t_len} O={n_obj} plan={args.plan}"
          f" corrections={kind.corrections}: lowering ...", flush=True)
    t0 = time.perf_counter()
    lowered = step.lower(params)
    t1 = time.perf_counter()
    print(f"[benchmark compile] lowered in {t1 - t0:.1f} s; compiling ...", flush=True)
    compiled = lowered.compile()
    t2 = time.perf_counter()
    (loss, _), grads = compiled(params)
    gnorm = float(optax.global_norm(grads))
    mem = compiled.memory_analysis()
    result = {
        "meta": {"command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M")},
        "variant": args.variant, "resolution": size, "frames": t_len, "objects": n_obj,
        "plan": args.plan, "corrections": kind.corrections,
        "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1),
        "hlo_chars": len(lowered.as_text()),
        "temp_mib": round(mem.temp_size_in_bytes / 2**20, 1) if mem else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loss": float(loss), "grad_norm": gnorm,
    }
    print("\n| plan | corrections | lower s | compile s | StableHLO chars | temp MiB | "
          "peak RSS GiB | loss | grad norm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    r = result
    print(f"| {r['plan']} | {r['corrections']} | {r['lower_s']} | {r['compile_s']} | "
          f"{r['hlo_chars']:,} | {r['temp_mib']} | {r['peak_rss_gib']} | {r['loss']:.5f} | "
          f"{r['grad_norm']:.4f} |")
    if args.json:
        out = pathlib.Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
