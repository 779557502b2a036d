#!/usr/bin/env python
"""Train-step cost: TPU v5e memory and FLOPs ahead of time, and achieved FLOP/s on this CPU.

    python scripts/benchmark_train.py [--variants efficienttam_s efficienttam_s_1]
        [--resolution 1024] [--frames 8] [--objects 3] [--batch-per-device 1] [--plan click]
        [--remats none dots full] [--remat-frames off on] [--combos none:off full:on ...]
        [--image-batch-per-device 4] [--image-masks 64] [--skip-image] [--topology v5e:2x2]
        [--chips 0] [--preset fsdp] [--fsdp 0] [--case-timeout 1500]
        [--cpu-variant tiny] [--cpu-batch 8] [--cpu-steps 5] [--no-cpu-breakdown] [--micro]
        [--skip-tpu] [--skip-cpu] [--json artifacts/benchmark_train.json]
    python scripts/benchmark.py train [same arguments]

1. TPU, ahead of time (nothing runs on a TPU). With libtpu importable (`--libtpu-path`, default
   .venv/libtpu_site or /tmp/libtpu_site), `jax.experimental.topologies` gives the devices of a
   real topology (`--topology`, default v5e:2x2 = 4 chips) and the real TPU compiler compiles
   the trainer's jitted step (`training.train_step.make_train_step`, its shardings and donation)
   on abstract arguments. A case = variant x ViT remat policy x per-frame remat, in the paper's
   setting (bfloat16 compute, float32 params, AdamW, memory-attention dropout on), on a video batch
   (--frames, --objects, --batch-per-device clips per chip; `--plan click`: a click + 7
   corrections on frame 0, the other frames tracked from memory; `--plan mask`: frame 0's GT
   mask, no corrections: less HLO, a faster compile) and, per variant, an image batch
   (T = 1, --image-masks masks, click + 7 corrections). Mesh ("data", "fsdp") over the chips
   (`--chips`: the first N), `--fsdp` of them on the fsdp axis (0: all), `--preset` rules; the
   global batch is chips x per-chip batch. Each case compiles in a child process, killed after
   `--case-timeout` s (its FLOP count, taken before the compile, is kept). Compiles are slow:
   5-20 minutes per S case at 1024 on a loaded 2-core host (docs/benchmarks.md).
   Memory per chip: `memory_analysis()` arguments, outputs, aliased (donated state),
   temporaries; total = arguments + outputs - aliased + temporaries + code, against --hbm-gib
   (16 per v5e chip). A program that does not fit is refused by the compiler, whose message is
   parsed instead: "HLO temporaries (X) exceeds available HBM (Y)" (temporaries alone) or
   "Used X of Y hbm" (total); Y is what the compiler may use of a chip (15.75 GiB on v5e).
   FLOPs: XLA's `cost_analysis()` counts a loop's body once, and the step is full of loops
   (the scan over frames, `lax.map` over attention's query chunks), so the script counts the
   dot + convolution FLOPs of the step's jaxpr itself (`tam_jax.flops`: scans times their
   length, remat recomputation included, transposed convolutions without their inserted
   zeros; low / high = every cond's cheapest / costliest branch: the correction loop on a
   tracked frame runs only when that frame is drawn). Elementwise work is not counted.
   Per chip = global / chips (every chip holds whole examples). Ideal step time = high
   FLOPs per chip / the chip's peak (--peak-tflops, 197 for v5e bf16): a bound, not a
   prediction.

2. CPU (measured, all cores: XLA's default thread pool). A small config (`--cpu-variant`,
   default tiny at 128 px, --cpu-frames 2, --cpu-objects 3, GT-mask plan, --cpu-batch 8,
   float32): the jitted train step's median time over --cpu-steps steps after --cpu-warmup
   untimed ones, its FLOPs (jaxpr count, as above; XLA's figure too), and achieved FLOP/s
   against this machine's float32 matmul peak measured in the same run (a jitted n x n @ n x n
   jnp.dot, --peak-n 2048, median of --peak-repeats, FLOP/s = 2 n^3 / t; measured before and
   after the step timing, since the machine is shared; the median of both is used). To see
   where the time goes, the forward alone (the clip loss, no gradient) and the image encoder
   alone are timed the same way. Target: train step >= 40 % of the matmul peak.

Prints tables and writes JSON (meta: machine, versions, command; tpu: per case; cpu). `--micro`
cuts every model to one block per stage (tests only: compile time grows with the op count).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tam_jax import aot  # noqa: E402 (jax-free at import)

GIB = 2**30
RESULT_MARK = "@@benchmark_train_case@@"
# One block per stage: XLA's compile time grows with the number of ops, not with widths
# (the same cut as tests/test_train_step.py).
MICRO = {"vit.depth": 2, "vit.global_att_blocks": (1,), "memory_attention.num_layers": 1,
         "mask_decoder.transformer_depth": 1, "memory_encoder.fuser_layers": 1}
TARGET_CPU_RATIO = 0.40  # issue 8 (issue 5, the trainer, asked for 30 %)


def log(msg: str) -> None:
    print(f"[benchmark train] {msg}", flush=True)


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan")))


# ------------------------------------------------------------------------------------------
# Model, optimiser, batch and plan of a case (shared by the TPU and CPU parts)
# ------------------------------------------------------------------------------------------


def model_config(variant: str, resolution: int, dtype: str, remat: str, micro: bool,
                 conv_impl: str = "xla"):
    """The training-mode model config of a case."""
    from tam_jax import configs

    cfg = configs.get_config(variant)
    extra = {"compute_dtype": dtype, "vit.remat": remat, "conv_impl": conv_impl,
             **(MICRO if micro else {})}
    if resolution != cfg.image_size:
        extra["image_size"] = resolution
    return configs.for_training(configs.override(cfg, extra).validate())


def plan_kind(name: str):
    """The static prompt plan of a case: "click" (click + 7 corrections on frame 0, the
    paper's point-input plan; on an image the same) or "mask" (GT mask on frame 0)."""
    from tam_jax.training.prompts import PlanKind

    if name == "click":
        return PlanKind(point_input=True, init_prompts=("click",), corrections=7)
    if name == "mask":
        return PlanKind(point_input=False, init_prompts=("mask",), corrections=0)
    raise ValueError(f"unknown plan {name!r}")


def plan_arrays(frames: int, kind_name: str):
    """order (T,) and corrected (T,): frames in order; with clicks, frame 0 is corrected."""
    import numpy as np

    corrected = np.zeros(frames, bool)
    corrected[0] = kind_name == "click"
    return np.arange(frames, dtype=np.int32), corrected


def batch_shapes(batch: int, frames: int, objects: int, size: int) -> dict:
    """(shape, dtype) of the pipeline's batch fields the step reads."""
    return {"images": ((batch, frames, size, size, 3), "uint8"),
            "masks": ((batch, frames, objects, size, size), "bool"),
            "obj_valid": ((batch, objects), "bool")}


# ------------------------------------------------------------------------------------------
# 1. TPU, ahead of time
# ------------------------------------------------------------------------------------------


def libtpu_available(path: str | None) -> bool:
    """Whether libtpu imports from `path`, tam_jax.aot.LIBTPU_PATHS or sys.path. The parent
    only looks: with libtpu importable, jax would also try a TPU backend for the CPU part; the
    children that compile for the topology load it (`aot.load_libtpu`)."""
    return aot.libtpu_path(path) is not None


def libtpu_version(path: str | None) -> str | None:
    from importlib import metadata

    found = aot.libtpu_path(path)
    for dist in metadata.distributions(path=([found] if found else []) + sys.path):
        if dist.metadata["Name"] == "libtpu":
            return dist.version
    return None


def tpu_cases(args) -> list[dict]:
    """Every case to compile, in run order (cheap-to-read baselines first)."""
    base = {"topology": args.topology, "chips": args.chips, "preset": args.preset,
            "fsdp": args.fsdp,
            "resolution": args.resolution, "micro": args.micro, "hbm_gib": args.hbm_gib,
            "peak_tflops": args.peak_tflops, "libtpu_path": args.libtpu_path}
    combos = [c.split(":") for c in args.combos] if args.combos else [
        (remat, rf) for remat in args.remats for rf in args.remat_frames]
    cases = []
    for variant in args.variants:
        for remat, rf in combos:
            cases.append({**base, "name": "video", "variant": variant, "remat": remat,
                          "remat_frames": rf == "on", "frames": args.frames,
                          "objects": args.objects, "batch_per_device": args.batch_per_device,
                          "plan": args.plan})
        if not args.skip_image:
            cases.append({**base, "name": "image", "variant": variant, "remat": combos[0][0],
                          "remat_frames": False, "frames": 1, "objects": args.image_masks,
                          "batch_per_device": args.image_batch_per_device, "plan": "click"})
    return cases


def _abstract_step(case: dict, devices):
    """(jitted step, its abstract sharded arguments, number of chips) of a case."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from tam_jax import sharding
    from tam_jax.models.tam import init_params, logical_axes
    from tam_jax.training.optimizer import OptimizerConfig, make_optimizer
    from tam_jax.training.step_setup import train_state_shardings
    from tam_jax.training.train_step import StepConfig, create_train_state, make_train_step

    cfg = model_config(case["variant"], case["resolution"], "bfloat16", case["remat"],
                       case["micro"])
    devices = devices[:case["chips"]] if case["chips"] else devices
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=case["fsdp"] or len(devices)),
                              devices)
    rep = NamedSharding(mesh, PartitionSpec())
    opt_cfg = OptimizerConfig()  # the paper's AdamW recipe: its state is what a run holds
    abstract_params = jax.eval_shape(lambda: init_params(cfg, 0))
    opt = make_optimizer(opt_cfg, abstract_params, cfg)
    state = jax.eval_shape(lambda: create_train_state(init_params(cfg, 0), opt, 0))
    state_sh = train_state_shardings(state, logical_axes(cfg), mesh, case["preset"])
    global_b = case["batch_per_device"] * mesh.size
    shapes = batch_shapes(global_b, case["frames"], case["objects"], cfg.image_size)
    batch_sh = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(s, jnp.dtype(d), sharding=batch_sh)
             for k, (s, d) in shapes.items()}
    plan = (jax.ShapeDtypeStruct((case["frames"],), jnp.int32, sharding=rep),
            jax.ShapeDtypeStruct((case["frames"],), jnp.bool_, sharding=rep))
    sharded = (sharding.with_shardings(state, state_sh), batch, *plan)
    step_cfg = StepConfig(model=cfg, optimizer=opt_cfg, remat_frames=case["remat_frames"])
    step = make_train_step(step_cfg, opt, plan_kind(case["plan"]))
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sh, rep, rep),
                     out_shardings=(state_sh, rep), donate_argnums=0)
    return jitted, sharded, mesh.size


def run_tpu_case(case: dict) -> dict:
    """Compile one case for the TPU topology; memory, FLOPs, timings (child process)."""
    import jax

    from tam_jax.flops import count_flops

    aot.load_libtpu(case["libtpu_path"])
    devices = aot.topology_devices(case["topology"])
    t0 = time.perf_counter()
    jitted, sharded, chips = _abstract_step(case, devices)
    traced = jitted.trace(*sharded)  # one trace serves the FLOP count and the lowering
    res = {"chips": chips, "device_kind": devices[0].device_kind,
           "global_batch": case["batch_per_device"] * chips, **count_flops(traced)}
    res["trace_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lowered = traced.lower()
    res["lower_s"] = time.perf_counter() - t0
    print(RESULT_MARK + json.dumps(res), flush=True)  # the FLOPs survive a compile timeout
    chip = dataclasses.replace(aot.chip_spec(devices[0]), hbm_gib=case["hbm_gib"])
    report = aot.compile_report(lowered, chip)  # out of HBM: the compiler's figures, parsed
    res.update({k: report[k] for k in ("compile_s", "memory", "error") if k in report})
    if "cost" in report:
        res["xla_flops_per_chip"] = report["cost"]["xla_flops"]
        res["xla_optimal_seconds"] = report["cost"]["optimal_seconds"]
        res["jax_version"] = jax.__version__
    return res


def _derive(case: dict, res: dict) -> dict:
    """Per-chip and per-clip FLOPs and the ideal step time, from the global jaxpr count."""
    if "flops_high" not in res:
        return res
    chips, per = res["chips"], case["batch_per_device"]
    for k in ("low", "high"):
        res[f"flops_{k}_per_chip"] = res[f"flops_{k}"] / chips
        res[f"flops_{k}_per_item"] = res[f"flops_{k}"] / (chips * per)
    res["ideal_step_s_at_peak"] = res["flops_high_per_chip"] / (case["peak_tflops"] * 1e12)
    return res


def tpu_case_in_child(case: dict, timeout: float) -> dict:
    """Run `run_tpu_case` in a child process (own memory, killable after `timeout` s)."""
    res = aot.run_in_child(Path(__file__).resolve(), case, timeout, RESULT_MARK)
    return _derive(case, res)


def tpu_part(args, save) -> list[dict]:
    """Every TPU case, one child each; prints progress and `save`s after each case (a long
    run that is stopped keeps what it finished)."""
    out = []
    for case in tpu_cases(args):
        label = case_label(case)
        log(f"TPU {case['topology']}: {label} ...")
        res = tpu_case_in_child(case, args.case_timeout)
        mem = res.get("memory") or {}
        what = "total" if "total" in mem else "temp"
        done = (f"{what} {mem[what] / GIB:.2f} GiB, fits: {mem['fits']}, compile "
                f"{res['compile_s']:.0f} s" if what in mem else res.get("error", "")[:300])
        log(f"  {label}: {done}")
        out.append({"case": case, "result": res})
        save(out)
    return out


def case_label(case: dict) -> str:
    return (f"{case['variant']} {case['name']}/{case['plan']} {case['resolution']}px "
            f"T={case['frames']} "
            f"O={case['objects']} b/chip={case['batch_per_device']} remat={case['remat']} "
            f"remat_frames={'on' if case['remat_frames'] else 'off'}")


# ------------------------------------------------------------------------------------------
# 2. CPU, measured
# ------------------------------------------------------------------------------------------


def _median_time(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of `fn` (which must block until its work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def matmul_peak(n: int, repeats: int) -> dict:
    """This machine's float32 matmul rate: a jitted n x n @ n x n jnp.dot."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    times = _median_time(lambda: dot(a, b).block_until_ready(), repeats, warmup=2)
    return {"n": n, "samples_s": times, "flops": 2 * n**3}


def _synthetic_batch(b: int, t: int, o: int, s: int) -> dict:
    """Random images with one visible rectangle per object and frame (its GT mask)."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(b, t, s, s, 3), dtype=np.uint8)
    masks = np.zeros((b, t, o, s, s), bool)
    side = max(s // 4, 2)
    for i in range(b):
        for k in range(o):
            for f in range(t):
                y, x = rng.integers(0, s - side, size=2)
                masks[i, f, k, y:y + side, x:x + side] = True
                images[i, f, y:y + side, x:x + side] = (200, (60 * k) % 255, 90)
    return {"images": images, "masks": masks, "obj_valid": np.ones((b, o), bool)}


def _timed_jit(fn, args: tuple, steps: int, warmup: int, carry_first: bool = False) -> dict:
    """Compile `fn` ahead of time, count its FLOPs, time it. With carry_first, the first
    output replaces the first argument each call (a train state, donated)."""
    import jax

    from tam_jax.flops import count_flops

    t0 = time.perf_counter()
    traced = jax.jit(fn, donate_argnums=(0,) if carry_first else ()).trace(*args)
    res = count_flops(traced)
    res["trace_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = traced.lower().compile()
    res["compile_s"] = time.perf_counter() - t0
    res["xla_flops"] = _xla_flops(compiled)
    holder = list(args)

    def call():
        out = compiled(*holder)
        jax.block_until_ready(out)
        if carry_first:
            holder[0] = out[0]

    res["samples_s"] = _median_time(call, steps, warmup)
    res["median_s"] = statistics.median(res["samples_s"])
    log(f"  traced {res['trace_s']:.1f} s, compiled {res['compile_s']:.1f} s, "
        f"median {res['median_s'] * 1e3:.1f} ms")
    res["flops_per_s"] = res["flops_high"] / res["median_s"]
    return res


def cpu_part(args) -> dict:
    """Matmul peak, then train step / forward / image encoder, then the peak again."""
    import jax
    import jax.numpy as jnp

    from input_pipeline.device import model_images
    from tam_jax.models.tam import EfficientTAM, init_params
    from tam_jax.training import clip_forward
    from tam_jax.training.optimizer import OptimizerConfig, make_optimizer
    from tam_jax.training.train_step import StepConfig, create_train_state, make_train_step

    log(f"CPU: matmul peak ({args.peak_n}^3 float32) ...")
    peak_before = matmul_peak(args.peak_n, args.peak_repeats)
    cfg = model_config(args.cpu_variant, args.cpu_resolution, "float32", "none", args.micro,
                       args.cpu_conv_impl)
    params = init_params(cfg, 0)
    opt_cfg = OptimizerConfig()
    opt = make_optimizer(opt_cfg, params, cfg)
    step_cfg = StepConfig(model=cfg, optimizer=opt_cfg, memory_segments=args.cpu_memory_segments)
    kind = plan_kind("mask")
    order, corrected = (jnp.asarray(a) for a in plan_arrays(args.cpu_frames, "mask"))
    batch = jax.tree.map(jnp.asarray, _synthetic_batch(args.cpu_batch, args.cpu_frames,
                                                       args.cpu_objects, cfg.image_size))
    # a copy: the step donates its state, and `params` is still needed by the forward
    state = create_train_state(jax.tree.map(jnp.copy, params), opt, 0)
    timing = dict(steps=args.cpu_steps, warmup=args.cpu_warmup)

    log(f"CPU: train step ({args.cpu_variant}, {cfg.image_size} px, batch {args.cpu_batch}, "
        f"{args.cpu_frames} frames, {args.cpu_objects} objects): compile + time ...")
    train = _timed_jit(make_train_step(step_cfg, opt, kind), (state, batch, order, corrected),
                       carry_first=True, **timing)

    def forward(params, batch, key):
        inputs = {"images": model_images(batch["images"], jnp.float32),
                  "masks": batch["masks"], "obj_valid": batch["obj_valid"]}
        num = jnp.sum(batch["obj_valid"], dtype=jnp.float32)
        return clip_forward.clip_loss(cfg, params, inputs, kind, order, corrected, key, num,
                                      memory_segments=args.cpu_memory_segments)[0]

    def encoder(params, images):
        flat = images.reshape((-1,) + images.shape[2:])
        model = EfficientTAM(cfg).bind({"params": params})
        return model.encode_image(model_images(flat, jnp.float32))

    parts = {"train_step": train}
    if not args.no_cpu_breakdown:
        log("CPU: forward (clip loss) and image encoder alone ...")
        parts["forward"] = _timed_jit(forward, (params, batch, jax.random.key(1)), **timing)
        parts["image_encoder"] = _timed_jit(encoder, (params, batch["images"]), **timing)
    log("CPU: matmul peak again ...")
    peak_after = matmul_peak(args.peak_n, args.peak_repeats)
    samples = peak_before["samples_s"] + peak_after["samples_s"]
    peak = {"n": args.peak_n, "flops_per_s": peak_before["flops"] / statistics.median(samples),
            "before_flops_per_s": peak_before["flops"] / statistics.median(
                peak_before["samples_s"]),
            "after_flops_per_s": peak_after["flops"] / statistics.median(
                peak_after["samples_s"]),
            "samples_s": samples}
    out = {"config": {"variant": args.cpu_variant, "resolution": cfg.image_size,
                      "frames": args.cpu_frames, "objects": args.cpu_objects,
                      "batch": args.cpu_batch, "dtype": "float32", "plan": "mask",
                      "conv_impl": args.cpu_conv_impl,
                      "memory_segments": args.cpu_memory_segments, "micro": args.micro},
           "matmul_peak": peak, **parts}
    for part in parts.values():
        part["ratio_to_peak"] = part["flops_per_s"] / peak["flops_per_s"]
    return out


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------


def _g(x: float) -> str:
    return f"{x / GIB:.2f}"


def print_tpu_table(rows: list[dict]) -> None:
    print(f"\n{'case':<62}{'args':>7}{'out':>7}{'alias':>7}{'temp':>8}{'total':>8}{'fits':>6}"
          f"{'TFLOP/chip':>12}{'TFLOP/item':>12}{'XLA TFLOP':>10}{'ideal s':>9}{'compile s':>10}")
    for row in rows:
        case, r = row["case"], row["result"]
        mem = r.get("memory") or {}
        label = case_label(case).replace("efficienttam_", "")
        if "argument" in mem:
            fits = "yes" if mem["fits"] else "NO"
            cells = (f"{_g(mem['argument']):>7}{_g(mem['output']):>7}{_g(mem['alias']):>7}"
                     f"{_g(mem['temp']):>8}{_g(mem['total']):>8}{fits:>6}")
        elif mem:  # the compiler's out-of-memory message: temporaries or total, > HBM
            temp = _g(mem["temp"]) if "temp" in mem else "-"
            total = _g(mem["total"]) if "total" in mem else "-"
            cells = f"{'-':>7}{'-':>7}{'-':>7}{temp:>8}{total:>8}{'NO':>6}"
        else:
            cells = f"{'-':>7}{'-':>7}{'-':>7}{'-':>8}{'-':>8}{'?':>6}"
        if "flops_high_per_chip" in r:
            lo, hi = r["flops_low_per_chip"] / 1e12, r["flops_high_per_chip"] / 1e12
            item = r["flops_high_per_item"] / 1e12
            flops = f"{f'{lo:.2f}-{hi:.2f}':>12}{item:>12.2f}"
            flops += f"{r.get('xla_flops_per_chip', float('nan')) / 1e12:>10.2f}"
            flops += f"{r['ideal_step_s_at_peak']:>9.3f}"
        else:
            flops = f"{'-':>12}{'-':>12}{'-':>10}{'-':>9}"
        comp = f"{r['compile_s']:>10.0f}" if "compile_s" in r else f"{'-':>10}"
        print(f"{label:<62}{cells}{flops}{comp}")
        if "error" in r:
            print(f"    error: {r['error'][:240]}")
    print("\nGiB per chip (total = args + out - alias + temp + code); TFLOP = dot + conv FLOPs "
          "of the step's jaxpr (low-high: cheapest-costliest cond branches), per chip and per "
          "clip / image; XLA TFLOP = cost_analysis (loop bodies counted once: an undercount); "
          "ideal s = high FLOPs / chip peak.")


def print_cpu_table(cpu: dict) -> None:
    peak = cpu["matmul_peak"]
    print(f"\nCPU matmul peak (float32 {peak['n']}^3): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"(before {peak['before_flops_per_s'] / 1e9:.1f}, after "
          f"{peak['after_flops_per_s'] / 1e9:.1f})")
    print(f"{'what':<16}{'GFLOP':>10}{'XLA GFLOP':>11}{'median ms':>11}{'GFLOP/s':>10}"
          f"{'% of peak':>11}{'compile s':>11}")
    for name in ("train_step", "forward", "image_encoder"):
        if name not in cpu:
            continue
        r = cpu[name]
        print(f"{name:<16}{r['flops_high'] / 1e9:>10.3f}{r['xla_flops'] / 1e9:>11.3f}"
              f"{r['median_s'] * 1e3:>11.1f}{r['flops_per_s'] / 1e9:>10.2f}"
              f"{100 * r['ratio_to_peak']:>10.1f}%{r['compile_s']:>11.1f}")
    ratio = cpu["train_step"]["ratio_to_peak"]
    print(f"train step: {100 * ratio:.1f} % of the matmul peak (target >= "
          f"{100 * TARGET_CPU_RATIO:.0f} %: {'met' if ratio >= TARGET_CPU_RATIO else 'NOT met'})")


def meta(argv: list[str], libtpu_path: str | None) -> dict:
    import flax
    import jax
    import optax

    from scripts.machine_info import cpu_model

    out = {"machine": f"{cpu_model()}, {os.cpu_count()} cpus",
           "cpus_usable": len(os.sched_getaffinity(0)), "python": platform.python_version(),
           "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
           "date": datetime.date.today().isoformat(),
           "command": "python scripts/benchmark_train.py " + " ".join(argv),
           "libtpu": libtpu_version(libtpu_path)}
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    tpu = p.add_argument_group("TPU (ahead of time)")
    tpu.add_argument("--variants", nargs="+", default=["efficienttam_s", "efficienttam_s_1"])
    tpu.add_argument("--resolution", type=int, default=1024)
    tpu.add_argument("--frames", type=int, default=8, help="video clip length")
    tpu.add_argument("--objects", type=int, default=3, help="objects per clip")
    tpu.add_argument("--batch-per-device", type=int, default=1, help="clips per chip")
    tpu.add_argument("--remats", nargs="+", default=["none", "dots", "full"],
                     choices=["none", "dots", "full"], help="ViT block remat policies")
    tpu.add_argument("--remat-frames", nargs="+", default=["off", "on"], choices=["off", "on"],
                     help="per-frame remat of the tracking scan")
    tpu.add_argument("--combos", nargs="+", default=None, metavar="REMAT:FRAMES",
                     help="explicit (ViT remat, frame remat) pairs, e.g. none:off full:on, "
                          "instead of every --remats x --remat-frames pair")
    tpu.add_argument("--image-batch-per-device", type=int, default=4)
    tpu.add_argument("--image-masks", type=int, default=64, help="objects per image")
    tpu.add_argument("--skip-image", action="store_true", help="no image-batch case")
    tpu.add_argument("--topology", default="v5e:2x2", help="e.g. v5e:2x2, v5e:4x4, v6e:2x2")
    tpu.add_argument("--chips", type=int, default=0,
                     help="use the first N chips of the topology (0: all of them)")
    tpu.add_argument("--plan", default="click", choices=["click", "mask"],
                     help="video prompt plan: click + 7 corrections on frame 0 (the paper's "
                          "point input), or the GT mask on frame 0 (no corrections)")
    tpu.add_argument("--preset", default="fsdp", choices=["dp", "fsdp", "zero1"])
    tpu.add_argument("--fsdp", type=int, default=0, help="fsdp axis size (0: all chips)")
    tpu.add_argument("--hbm-gib", type=float, default=16.0, help="HBM per chip (v5e: 16)")
    tpu.add_argument("--peak-tflops", type=float, default=197.0,
                     help="chip peak for the ideal step time (v5e bf16: 197)")
    tpu.add_argument("--case-timeout", type=float, default=1500.0,
                     help="seconds per case (trace + lower + compile) before it is killed")
    tpu.add_argument("--libtpu-path", default=None,
                     help="a pip --target folder holding libtpu (prepended to sys.path); "
                          "default: .venv/libtpu_site (`make libtpu`), /tmp/libtpu_site")
    cpu = p.add_argument_group("CPU (measured)")
    cpu.add_argument("--cpu-variant", default="tiny")
    cpu.add_argument("--cpu-resolution", type=int, default=128)
    cpu.add_argument("--cpu-frames", type=int, default=2)
    cpu.add_argument("--cpu-objects", type=int, default=3)
    cpu.add_argument("--cpu-batch", type=int, default=8)
    cpu.add_argument("--cpu-conv-impl", choices=("xla", "matmul"), default="matmul",
                     help="the model's conv_impl on CPU (matmul: XLA:CPU's conv weight "
                          "gradients are slow; see tam_jax.models.layers.Conv2d)")
    cpu.add_argument("--cpu-memory-segments", type=int, default=0,
                     help="train.memory_segments: tracked frames in this many scans, each "
                          "attending only over the memory frames it can have (0: one scan "
                          "over every bank slot, empty ones masked)")
    cpu.add_argument("--cpu-steps", type=int, default=5, help="timed steps")
    cpu.add_argument("--cpu-warmup", type=int, default=2, help="untimed steps after compiling")
    cpu.add_argument("--no-cpu-breakdown", action="store_true",
                     help="time the train step only (not the forward / image encoder alone)")
    cpu.add_argument("--peak-n", type=int, default=2048, help="matmul side for the CPU peak")
    cpu.add_argument("--peak-repeats", type=int, default=7)
    p.add_argument("--micro", action="store_true",
                   help="one block per model stage (smoke tests only)")
    p.add_argument("--skip-tpu", action="store_true")
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--json", default="artifacts/benchmark_train.json")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    for combo in args.combos or ():
        remat, _, frames = combo.partition(":")
        if remat not in ("none", "dots", "full") or frames not in ("off", "on"):
            p.error(f"--combos {combo!r}: expected REMAT:FRAMES, REMAT in none / dots / full, "
                    "FRAMES off / on")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args._case is not None:  # a child compiling one TPU case
        print(RESULT_MARK + json.dumps(run_tpu_case(json.loads(args._case))), flush=True)
        return 0
    out: dict = {"meta": meta(argv, args.libtpu_path), "tpu": None, "cpu": None}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: path.write_text(json.dumps(out, indent=2))
    if not args.skip_cpu:  # first: no compile of ours competes with the timing
        out["cpu"] = cpu_part(args)
        save()
        print_cpu_table(out["cpu"])
    if args.skip_tpu:
        out["tpu_skipped"] = "--skip-tpu"
    elif not libtpu_available(args.libtpu_path):
        out["tpu_skipped"] = f"libtpu not importable (looked in {args.libtpu_path} too)"
        log(f"TPU part skipped: {out['tpu_skipped']}")
    else:
        out["tpu"] = tpu_part(args, lambda rows: (out.update(tpu=rows), save()))
        print_tpu_table(out["tpu"])
    save()
    log(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
