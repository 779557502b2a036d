#!/usr/bin/env python
"""Benchmarks, tam_jax vs the official PyTorch model (image predictor / video tracking).

Both run the same converted random weights on the same CPU in one process, alternating
(official, tam_jax, official, ...) after warm-up, so drifts in machine load hit both alike.
One "image step" = set_image (preprocess + ViT + neck) + predict (one click, multimask),
through each project's image predictor. Prints a table (median, spread = IQR / median, ratio
tam_jax / official) and writes JSON.

    python scripts/benchmark.py image [--variants efficienttam_ti_512x512 ...] [--repeats 7]
        [--threads N] [--json artifacts/benchmark_image.json]

`track`: per-frame video tracking latency with the official benchmark's protocol (one object,
one click on frame 0, propagate forward; the first `--warmup-frames` frames of each pass and
the whole first pass (compilation) are not timed), both video predictors on the same JPEG
frames and weights, alternating passes; then tam_jax alone with 1, 4 and 16 objects.

    python scripts/benchmark.py track [--variants ...] [--frames 20] [--warmup-frames 8]
        [--repeats 2] [--objects 1 4 16] [--json artifacts/benchmark_track.json]

It also counts the matmul GFLOP of one full-memory frame per object count (image encoder once
+ the track step of every object; `--flops-only` counts them without timing anything): their
n/1 ratio is what the n/1 time ratio would be at one object's FLOP rate, so measured / FLOP
ratio says how much batching objects raised (< 1) or lowered (> 1) that rate.

`encoder`: the image encoder alone (ViT + neck on a preprocessed input), both sides on the
same converted weights, alternating. `train-step` (or `train`) and `input` run
scripts/benchmark_train.py and scripts/benchmark_input.py with their own flags; `matmul`
(scripts/benchmark_matmul.py) this machine's XLA matmul rates, float32 and bf16 operands,
batched and looped; `all` runs matmul, encoder, track, train-step (CPU only) and input at
their defaults, one after another (on a 2-core machine that is most of an hour: track's
default variants include S-1 at 1024). `track --matmul-precision bfloat16` runs tam_jax with
bf16 matmul operands, `--official-bf16` the official under PyTorch's CPU bf16 autocast.

    python scripts/benchmark.py encoder [--variants ...] [--repeats 7]
    python scripts/benchmark.py train-step --skip-tpu --cpu-variant efficienttam_ti ...
    python scripts/benchmark.py all [--record]

No regression: after each subcommand the suite compares its tracked figures
(scripts/benchmark_records.py) with the last ones recorded in the table "Recorded figures"
at the end of docs/benchmarks.md, prints both, and prints a WARNING for every figure more
than 10 % worse. `--record` appends this run's figures to that table; `--no-check` skips the
comparison; `--records PATH` reads / writes another file. These three go before or after the
subcommand's own flags.

Figures go into docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
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

    return _alternate(run_ours, run_theirs, repeats, warmup)


def bench_encoder(variant: str, repeats: int, warmup: int) -> dict:
    """Image encoder (ViT + neck) alone, float32, batch 1, one preprocessed random input."""
    import jax
    import numpy as np
    import torch

    from tam_jax.configs import get_config
    from tam_jax.convert.checkpoint import official_to_params
    from tam_jax.convert.official import build_official_model, randomize_
    from tam_jax.models.tam import EfficientTAM

    cfg = get_config(variant)
    model = build_official_model(cfg, seed=0)
    randomize_(model, seed=0)
    params = official_to_params(model.state_dict(), cfg)
    ours_model = EfficientTAM(cfg)
    s = cfg.image_size
    x = np.random.RandomState(0).randn(1, s, s, 3).astype(np.float32)  # NHWC, normalised
    x_jax, x_torch = jax.device_put(x), torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    encode = jax.jit(lambda p, im: ours_model.apply({"params": p}, im,
                                                    method=EfficientTAM.encode_image))

    def run_ours():
        return jax.block_until_ready(encode(params, x_jax))

    def run_theirs():
        with torch.inference_mode():
            return model.image_encoder(x_torch)

    return _alternate(run_ours, run_theirs, repeats, warmup)


def _alternate(run_ours, run_theirs, repeats: int, warmup: int) -> dict:
    """Time both sides alternating (official first) after a first call and warm-ups."""
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


TRACK_VARIANTS = ("efficienttam_ti_512x512", "efficienttam_s_512x512", "efficienttam_s_1")


def _write_jpeg_video(folder: Path, frames: int, h: int = 480, w: int = 640):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.randint(40, 110, size=(h, w, 3)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        img = base.copy()
        img[(yy - 240) ** 2 + (xx - 200 - 8 * t) ** 2 < 60 ** 2] = (220, 50, 40)
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=90)


def _timed_pass(frames_iter, warmup_frames: int) -> list[float]:
    """Seconds per yielded frame, frames after the first `warmup_frames`."""
    out, t = [], time.perf_counter()
    for i, _ in enumerate(frames_iter):
        now = time.perf_counter()
        if i >= warmup_frames:
            out.append(now - t)
        t = now
    return out


def bench_track(variant: str, frames: int, warmup_frames: int, repeats: int,
                objects: list[int], folder: Path, flops_only: bool = False,
                conv_impl: str | None = None, matmul_precision: str = "float32",
                official_bf16: bool = False) -> dict:
    import contextlib
    import dataclasses

    import numpy as np
    import torch

    from tam_jax.configs import get_config
    from tam_jax.convert.checkpoint import official_to_params
    from tam_jax.convert.official import (
        build_official_model,
        make_objects_present_,
        randomize_,
    )
    from tam_jax.video_predictor import VideoPredictor

    cfg = get_config(variant)
    official = build_official_model(cfg, seed=0, video=True)
    randomize_(official, seed=0)
    make_objects_present_(official)  # object present on every frame: the full path is timed
    ours = VideoPredictor(dataclasses.replace(cfg, matmul_precision=matmul_precision),
                          official_to_params(official.state_dict(), cfg), progress=False,
                          conv_impl=conv_impl)
    clicks = [np.array([[200.0 + 25 * (k % 8), 240.0 + 40 * (k // 8)]]) for k in range(16)]

    def session_ours(n_obj):
        state = ours.init_state(str(folder))
        for k in range(n_obj):
            ours.add_new_points_or_box(state, 0, k, points=clicks[k], labels=[1])
        return state

    def pass_theirs():
        # --official-bf16: PyTorch's CPU autocast (oneDNN bf16 matmuls / convolutions)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if official_bf16
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            state = official.init_state(str(folder))
            official.add_new_points(state, 0, 0, clicks[0], np.array([1], np.int32))
            return _timed_pass(official.propagate_in_video(state), warmup_frames)

    def pass_ours(n_obj=1):
        return _timed_pass(ours.propagate_in_video(session_ours(n_obj)), warmup_frames)

    if flops_only:  # no timing: one pass per object count, its last frame's FLOPs
        return {"gflop_per_frame": {n: _frame_gflop(ours, lambda n=n: pass_ours(n))
                                    for n in objects}}
    first = {}

    def compiling_pass():
        t0 = time.perf_counter()
        pass_ours()
        first["s"] = time.perf_counter() - t0

    # the untimed passes that compile also give the FLOPs (no pass run for them alone)
    gflop = {1: _frame_gflop(ours, compiling_pass)}
    pass_theirs()  # warm-up of the official side
    times = {"official": [], "tam_jax": []}
    for _ in range(repeats):
        times["official"] += pass_theirs()
        times["tam_jax"] += pass_ours()
    res = {name: _stats(v) for name, v in times.items()}
    res["ratio_tam_jax_over_official"] = res["tam_jax"]["median_s"] / res["official"]["median_s"]
    res["tam_jax_first_pass_s"] = first["s"]
    res["tam_jax_objects"] = {}
    for n in objects:
        if n != 1:  # compiles for this object count
            gflop[n] = _frame_gflop(ours, lambda n=n: pass_ours(n))
        res["tam_jax_objects"][n] = _stats(sum((pass_ours(n) for _ in range(repeats)), []))
    res["gflop_per_frame"] = {n: gflop[n] for n in objects}
    return res


def _frame_gflop(predictor, run_pass) -> dict:
    """The matmul / convolution GFLOP of one tracked frame (full memory), read off the jaxprs
    of the two jitted calls a frame makes: the image encoder (shared by all objects) and the
    track step (every object), whose arguments it captures while `run_pass` runs (an untimed
    pass: the spies add a little Python per call).

    Why: (encoder + n x per-object) / (encoder + per-object) is the n-object cost ratio at
    one object's FLOP rate; the table prints it next to the measured ratio, so the two say
    how much of a target like "16 objects <= 4x one" the FLOPs alone leave to batching."""
    import jax

    from tam_jax import flops

    seen = {}

    def spy(name):
        real = getattr(predictor, name)

        def call(*args, **kwargs):
            # the last call of the pass: the memory is full (bank donated, so shapes only)
            seen[name] = (real, jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x,
                args), kwargs)
            return real(*args, **kwargs)
        return call

    for name in ("_encode_frame", "_track_frame"):
        setattr(predictor, name, spy(name))
    try:
        run_pass()
    finally:
        for name in ("_encode_frame", "_track_frame"):
            delattr(predictor, name)  # back to the class's jitted methods
    out = {}
    for name, key in (("_encode_frame", "encoder"), ("_track_frame", "track_step")):
        real, args, kwargs = seen[name]
        counted = flops.count_flops(jax.make_jaxpr(functools.partial(real, **kwargs))(*args))
        out[key] = counted["flops_high"] / 1e9
    out["total"] = out["encoder"] + out["track_step"]
    return out


def _precision_tag(args) -> str:
    """Suffix of a result's name when either side runs other than float32 (so its recorded
    figures never compare with the float32 ones)."""
    if args.matmul_precision == "float32" and not args.official_bf16:
        return ""
    return (" [bf16 matmuls]" if args.matmul_precision == "bfloat16" else " [float32]") + (
        " vs official bf16 autocast" if args.official_bf16 else " vs official float32")


def main_track(args, argv) -> int:
    import tempfile

    import jax
    import torch

    from scripts.machine_info import cpu_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "video"
        _write_jpeg_video(folder, args.frames)
        for v in args.variants:
            print(f"[benchmark track] {v}: building, converting, compiling ...", flush=True)
            results[v + _precision_tag(args)] = bench_track(
                v, args.frames, args.warmup_frames, args.repeats, args.objects, folder,
                flops_only=args.flops_only, conv_impl=args.conv_impl,
                matmul_precision=args.matmul_precision, official_bf16=args.official_bf16)
    meta = {
        "what": ("video tracking: seconds per frame, 480x640 JPEG frames, 1 click on frame 0, "
                 f"forward propagation; tam_jax matmuls {args.matmul_precision}, official "
                 + ("bf16 CPU autocast" if args.official_bf16 else "float32")
                 + ("; --flops-only: matmul GFLOP per frame, no timing" if args.flops_only
                    else "")),
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus",
        "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "frames": args.frames, "warmup_frames": args.warmup_frames, "repeats": args.repeats,
        "conv_impl": args.conv_impl or "predictor default (matmul on CPU)",
        "command": "python scripts/benchmark.py " + " ".join(argv or sys.argv[1:]),
    }
    out = Path(args.json or "artifacts/benchmark_track.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    objs = "".join(f"{f'{n} obj ms':>11}" for n in args.objects)
    w = max([26] + [len(v) + 2 for v in results])  # the name column
    hi, lo = max(args.objects), min(args.objects)
    if args.flops_only:
        print(f"\n{'variant':<{w}}" + "".join(f"{f'{n} obj GFLOP':>14}" for n in args.objects)
              + f"{f'{hi}/{lo}':>7}   (per frame, full memory: encoder + track step)")
        for v, r in results.items():
            g = r["gflop_per_frame"]
            print(f"{v:<{w}}" + "".join(f"{g[n]['total']:>14.1f}" for n in args.objects)
                  + f"{g[hi]['total'] / g[lo]['total']:>7.2f}   encoder "
                  f"{g[lo]['encoder']:.1f}, track step per object {g[lo]['track_step'] / lo:.1f}")
        print(f"\nJSON: {out}")
        return 0
    print(f"\n{'variant':<{w}}{'official ms':>13}{'tam_jax ms':>12}{'ratio':>8}{objs}"
          f"{f'{hi}/{lo}':>7}{'FLOP ' + f'{hi}/{lo}':>11}")
    for v, r in results.items():
        per, gflop = r["tam_jax_objects"], r["gflop_per_frame"]
        cells = "".join(f"{per[n]['median_s'] * 1e3:>11.1f}" for n in args.objects)
        scale = per[hi]["median_s"] / per[lo]["median_s"]
        print(f"{v:<{w}}{r['official']['median_s'] * 1e3:>13.1f}"
              f"{r['tam_jax']['median_s'] * 1e3:>12.1f}"
              f"{r['ratio_tam_jax_over_official']:>8.2f}{cells}{scale:>7.2f}"
              f"{gflop[hi]['total'] / gflop[lo]['total']:>11.2f}")
        print(f"{'':<{w}}GFLOP per frame (encoder + track step): " + ", ".join(
            f"{n} obj {gflop[n]['encoder']:.1f} + {gflop[n]['track_step']:.1f}"
            for n in args.objects))
    print(f"\nper-frame medians; ratio = tam_jax / official (target <= 1.0); {hi}/{lo} objects "
          f"target <= 4; 'FLOP {hi}/{lo}': the same ratio of matmul FLOPs (the time ratio "
          f"at one object's FLOP rate); JSON: {out}")
    return 0


def _side_by_side_main(args, argv) -> int:
    """`image` / `encoder`: tam_jax vs official per variant, a table and JSON."""
    import jax
    import torch

    from scripts.machine_info import cpu_model

    bench = bench_image if args.what == "image" else bench_encoder
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for v in args.variants:
        print(f"[benchmark {args.what}] {v}: building, converting, compiling ...", flush=True)
        results[v] = bench(v, args.repeats, args.warmup)
    what = ("set_image + predict(1 click, multimask), 480x640 uint8 image, float32"
            if args.what == "image" else
            "image encoder (ViT + neck), one preprocessed image, float32")
    meta = {
        "what": what,
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus",
        "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "warmup": args.warmup,
        "command": "python scripts/benchmark.py " + " ".join(argv),
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


SUBCOMMANDS = ("image", "encoder", "track", "train-step", "train", "input", "matmul", "all")
# `all`: each part at its defaults (train-step on the CPU only: the TPU part is tpu_plan's).
ALL_PARTS = (("matmul", []), ("encoder", []), ("track", []), ("train-step", ["--skip-tpu"]),
             ("input", []))


def run_one(what: str, argv: list[str]) -> tuple[int, str]:
    """Run one subcommand with its own flags; returns (exit code, its JSON path)."""
    if what == "input":
        from scripts import benchmark_input

        # the JSON path as the script's own parser reads it (its default, abbreviations)
        return benchmark_input.main(argv), benchmark_input.parse_args(argv).json
    if what == "matmul":
        from scripts import benchmark_matmul

        return benchmark_matmul.main(argv), benchmark_matmul.parse_args(argv).json
    if what in ("train", "train-step"):
        from scripts import benchmark_train

        return benchmark_train.main(argv), benchmark_train.parse_args(argv).json
    parser = argparse.ArgumentParser(prog=f"benchmark.py {what}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"image / encoder default {list(DEFAULT_VARIANTS)}; "
                             f"track default {list(TRACK_VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs (passes for track) per side; default 7, track 2")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--json", default=f"artifacts/benchmark_{what}.json", help="output")
    parser.add_argument("--frames", type=int, default=20, help="track: video length")
    parser.add_argument("--warmup-frames", type=int, default=8,
                        help="track: untimed frames at the start of each pass (memory filling)")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16],
                        help="track: object counts timed for tam_jax")
    parser.add_argument("--conv-impl", choices=("xla", "matmul"), default=None,
                        help="track: tam_jax's convolutions (default: the predictor's choice, "
                             "matmul on CPU)")
    parser.add_argument("--matmul-precision", choices=("float32", "bfloat16"),
                        default="float32",
                        help="track: tam_jax's matmul operands (EfficientTAMConfig."
                             "matmul_precision; bfloat16: bf16 operands, float32 accumulation)")
    parser.add_argument("--official-bf16", action="store_true",
                        help="track: run the official predictor under torch.autocast('cpu', "
                             "bfloat16), the like-for-like comparison for --matmul-precision "
                             "bfloat16")
    parser.add_argument("--flops-only", action="store_true",
                        help="track: no timing (the official model is built only for its "
                             "weights); the matmul GFLOP of one frame for each --objects "
                             "count (their ratio is the time ratio at one object's FLOP "
                             "rate)")
    args = parser.parse_args(argv)
    args.what = what
    if what == "track":
        args.variants = args.variants or list(TRACK_VARIANTS)
        args.repeats = args.repeats or 2
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return main_track(args, [what, *argv]), args.json
    args.variants = args.variants or list(DEFAULT_VARIANTS)
    args.repeats = args.repeats or 7
    return _side_by_side_main(args, [what, *argv]), args.json


def check(what: str, json_path: str, records_path: str, record: bool, command: str) -> list[str]:
    """Compare a finished subcommand's figures with the recorded ones; print; maybe record."""
    from scripts import benchmark_records as br

    figures = br.figures_of(what, json.loads(Path(json_path).read_text()))
    if not figures:
        print(f"[benchmark {what}] no tracked figures in {json_path}")
        return []
    records = br.read_records(records_path)
    print(f"\n[benchmark {what}] against the last figures recorded in {records_path}:")
    print(br.comparison_table(figures, records))
    warnings = br.regressions(figures, records)
    for w in warnings:
        print(w)
    if not warnings:
        print(f"no figure more than {br.TOLERANCE:.0%} worse than its record")
    if record:
        br.append_records(records_path, figures, command)
        print(f"recorded {len(figures)} figure(s) in {records_path}")
    return warnings


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(
        prog="benchmark.py", add_help=False, allow_abbrev=False, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="benchmark.py {" + ",".join(SUBCOMMANDS) + "} [its flags] [--record] "
              "[--no-check] [--records PATH]")
    pre.add_argument("--record", action="store_true",
                     help="append this run's figures to the records table")
    pre.add_argument("--no-check", action="store_true",
                     help="do not compare with the recorded figures")
    pre.add_argument("--records", default="docs/benchmarks.md",
                     help="the Markdown file whose 'Recorded figures' table is read / written")
    known, rest = pre.parse_known_args(argv)
    what = rest[0] if rest and not rest[0].startswith("-") else None
    if what is None:
        if any(a in ("-h", "--help") for a in rest):
            pre.print_help()
            return 0
        what, rest = "image", ["image", *rest]  # the historical default
    if what not in SUBCOMMANDS:
        pre.error(f"unknown benchmark {what!r}: choose from {', '.join(SUBCOMMANDS)}")
    parts = ALL_PARTS if what == "all" else ((what, rest[1:]),)
    if what == "all" and rest[1:]:
        pre.error("`all` runs each part at its defaults and takes no other flags than "
                  "--record / --no-check / --records")
    warnings, code = [], 0
    for part, part_argv in parts:
        rc, json_path = run_one(part, part_argv)
        code = code or rc
        if rc == 0 and not known.no_check and Path(json_path).exists():
            command = "python scripts/benchmark.py " + " ".join([part, *part_argv])
            warnings += check(part, json_path, known.records, known.record, command)
    if warnings:
        print(f"\n{len(warnings)} regression warning(s): see above")
    return code


if __name__ == "__main__":
    sys.exit(main())
