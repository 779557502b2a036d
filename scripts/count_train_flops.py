#!/usr/bin/env python
"""FLOPs of a config's train step per clip, counted on the jaxpr: seconds, no compile, no TPU.

    python scripts/count_train_flops.py --config experiments/stage2_video.py:s \\
        --sweep train.memory_segments=0,1,2,3 --json artifacts/flops_segments.json

The step is built exactly as the trainer builds it (`training.step_setup`, one CPU device,
global batch 1: the figures are per clip) and traced for the costliest prompt plan the config
draws (most prompted frames, clicks + corrections). Counted: every dot_general and convolution
through the frame scan, branches and remat (`tam_jax/flops.py`: low = cheapest branch of each
cond, high = costliest). Each --sweep value is one trace; the table gives FLOPs per clip and
the ratio to the first value. For what a setting does to memory and compile, use
`scripts/tpu_plan.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.train import apply_overrides, load_config  # noqa: E402


def count(config, frames: int | None, objects: int | None, image: bool) -> dict:
    """FLOPs of one train step on one clip (or one image batch of `data.image.max_masks`)."""
    import jax

    from tam_jax import sharding
    from tam_jax.flops import count_flops
    from tam_jax.training import step_setup

    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1), jax.devices()[:1])
    setup = step_setup.build(config, mesh)
    if image:
        from input_pipeline import sampling

        t, o = 1, step_setup.dataclass_from(sampling.ImageConfig,
                                            config.data.get("image")).max_masks
    else:
        t, o = step_setup.clip_shape(config)
    t, o = frames or t, objects or o
    kind = step_setup.plan_kinds(setup.step.prompts, t)[0]
    t0 = time.perf_counter()
    traced = setup.jit(kind).trace(*setup.abstract_args(1, t, o))
    return {"frames": t, "objects": o, "kind": str(kind), **count_flops(traced),
            "trace_s": round(time.perf_counter() - t0, 1)}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="FILE[:ARG], as scripts/train.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for every row, as scripts/train.py --set")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                   help="one row per value of KEY (default: one row, the config as given)")
    p.add_argument("--frames", type=int, default=None, help="clip length (default: the config's)")
    p.add_argument("--objects", type=int, default=None,
                   help="objects per clip (default: the config's)")
    p.add_argument("--image", action="store_true",
                   help="the image batch (one frame, data.image.max_masks masks) instead")
    p.add_argument("--json", default=None, help="write the rows here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    if args.sweep:
        key, sep, values = args.sweep.partition("=")
        if not sep or not values:
            raise SystemExit(f"--sweep {args.sweep!r}: expected KEY=V1,V2,...")
        settings = [(key, v) for v in values.split(",")]
    else:
        settings = [None]
    for setting in settings:
        sets = list(args.set) + ([f"{setting[0]}={setting[1]}"] if setting else [])
        config = apply_overrides(load_config(args.config), sets)
        label = f"{setting[0]}={setting[1]}" if setting else "as given"
        print(f"[flops] {label} ...", file=sys.stderr, flush=True)
        row = {"setting": label, "set": sets, **count(config, args.frames, args.objects,
                                                       args.image)}
        rows.append(row)
    first = rows[0]["flops_high"]
    print(f"\n{args.config}, {rows[0]['frames']} frame(s) x {rows[0]['objects']} objects, "
          f"plan {rows[0]['kind']}, per clip:\n")
    print("| setting | TFLOP (low) | TFLOP (high) | high vs first | trace s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['flops_low'] / 1e12:.2f} | {r['flops_high'] / 1e12:.2f} | "
              f"{r['flops_high'] / first:.3f} | {r['trace_s']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": "python scripts/count_train_flops.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "date": str(datetime.date.today())}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
