#!/usr/bin/env python
"""Input pipeline throughput per CPU core: SA-V clips and SA-1B images vs the JPEG decode ceiling.

    python scripts/benchmark_input.py [--resolution 1024] [--videos 6] [--frames 48]
        [--video-hw 768 1024] [--images 6] [--image-hw 1500 2250] [--masks 64] [--repeats 3]
        [--json artifacts/benchmark_input.json] [--workdir DIR] [--keep]
    python scripts/benchmark.py input [same arguments]

1. Data. Synthetic raw data in the real formats (input_pipeline.synthetic): one SA-V train tar
   (H.264 mp4 at 24 fps + manual JSON) and one SA-1B tar (JPEG q90 + JSON with --masks masks
   plus an empty and a > 90 % mask), prepared with input_pipeline.prepare into three TFDS
   array_record datasets: sav (frames stored at <= 1024 long side, the default), sa1b original
   (JPEGs byte for byte) and sa1b pre-shrunk (max_side 1024: images re-encoded and masks
   re-encoded at the smaller size). A --workdir whose data matches the size flags is reused.
   (scripts/benchmark_input_data.py makes it.)

2. Measured, one process, one thread (cv2.setNumThreads(1); no Grain, no threads): every
   record of a dataset goes once per pass through
     * decode ceiling: simplejpeg full decode (input_pipeline.jpeg.decode) of the JPEGs that
       item uses: for SA-V the 8 frames of the clip the pipeline samples for it (same rng),
       for SA-1B its image; -> frames/s (SA-V) or images/s (SA-1B);
     * pipeline: the record read (`source[i]`, array_record + example parsing) and the
       transform `VideoClip(...).random_map(record, np.random.default_rng(seed))` (8 frames, 3
       objects; frames/s = 8 x clips/s) or `ImageSample(...)` (up to --max-masks masks);
       a different rng for every call.
   Decode and pipeline passes alternate (--repeats each, after one warm-up item), so drifts in
   machine load hit both alike; rates are medians over passes of items / process CPU seconds
   (= wall on an idle core; wall rates are in the JSON too). ratio = pipeline rate / decode
   ceiling: how close the whole transform gets to just decoding the JPEGs. Note that the
   pipeline decodes JPEGs scaled down in the DCT domain (jpeg.decode_at_least), so for images
   larger than about twice the resolution the ratio can exceed what a full decode allows.
   Also: a per-stage breakdown of one SA-V clip and one SA-1B image (JPEG decode; masks as
   RLE decode + mask warps for an affine clip, or straight from their runs for a resize /
   flip; image warp; colour), and a short end-to-end run of `pipeline.build` (in
   process, --grain-threads threads, batch 2) whose CPU per item, compared with the direct
   loop's, is the cost of the Grain wrapping.

3. Arithmetic, not measured: for a TPU v5e pod of --chips chips (8 chips per host; a v5litepod
   host has 224 vCPUs = 112 physical cores), the paper's global batch 256 and an assumed step
   time (--step-seconds), how many SA-V clips and SA-1B images per second one host must
   produce with the paper's mixture (SA-V 70 %, SA-1B 15.2 %, Internal 14.8 %; without the
   internal data SA-V : SA-1B renormalised to 0.822 : 0.178), how many cores that takes at the
   measured per-core rates, and whether one host's physical cores suffice.

Prints a table (dataset | pipeline rate/core | decode ceiling/core | ratio | target | met?) and
writes JSON (meta: machine, versions, command, sizes; results). Targets: SA-V >= 15
frames/s/core, SA-1B >= 4 images/s/core, ratio >= 0.70. Synthetic JPEGs and H.264 are smoother
than real footage and decode faster; the rates are upper bounds for real data of the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchmark_input_data import DATASETS, build_data, data_sizes  # noqa: E402
from scripts.machine_info import cpu_model, package_versions  # noqa: E402

# targets per core (one core, one thread) and for pipeline rate / decode ceiling
TARGET_SAV_FRAMES_PER_S = 15.0
TARGET_SA1B_IMAGES_PER_S = 4.0
TARGET_RATIO = 0.70

# TPU v5e host, stated assumptions (v5litepod: 8 chips, 224 vCPUs, 2 threads per core)
CHIPS_PER_HOST = 8
HOST_VCPUS = 224
HOST_PHYSICAL_CORES = 112
GLOBAL_BATCH = 256  # SAM 2 paper
MIX_PAPER = {"sav": 0.70, "sa1b": 0.152, "internal": 0.148}  # data_and_eval.md §3.1

# package versions the JSON records (the rates depend on them)
VERSIONED = ("numpy", "opencv-python-headless", "simplejpeg", "pycocotools", "av", "grain",
             "tensorflow-datasets", "array-record", "Pillow")


def log(msg: str) -> None:
    print(f"[benchmark input] {msg}", flush=True)


# ------------------------------------------------------------------------------- measuring

class Timer:
    """Process CPU and wall seconds of a block (process CPU also counts helper threads)."""

    def __enter__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def clip_jpegs(record: dict, seed: int, clip) -> list[bytes]:
    """The JPEGs the pipeline's first attempt decodes for this record and seed: VideoClip draws
    its clip first from the record's rng, so the same seed gives the same frames."""
    import numpy as np

    from input_pipeline import sampling

    choice = sampling.sample_clip(record, np.random.default_rng(seed), clip)
    positions = choice.positions if choice else range(len(record["frames"]))
    return [record["frames"][p] for p in positions]


def bench_dataset(source, transform, jpegs_for, repeats: int) -> dict:
    """Alternating decode / pipeline passes over every record; see the module docstring.

    jpegs_for(record, seed) -> the JPEG bytes the item decodes. Rates are per item (clip or
    image) and per frame (a clip has T frames, an image 1)."""
    import numpy as np

    from input_pipeline import jpeg

    n = len(source)
    # warm-up: first-call costs (imports, OpenCV / libjpeg tables, page cache)
    record = source[0]
    transform.random_map(record, np.random.default_rng(10**9))
    for b in jpegs_for(record, 10**9):
        jpeg.decode(b)
    passes = {"decode": [], "pipeline": [], "read": []}
    frames_per_item, masks_used = [], []
    for r in range(repeats):
        seeds = [r * n + i for i in range(n)]
        with Timer() as t_read:
            records = [source[i] for i in range(n)]
        passes["read"].append({"cpu_s": t_read.cpu, "wall_s": t_read.wall, "items": n})
        blobs = [jpegs_for(rec, s) for rec, s in zip(records, seeds)]
        with Timer() as t_dec:
            for item in blobs:
                for b in item:
                    jpeg.decode(b)
        passes["decode"].append({"cpu_s": t_dec.cpu, "wall_s": t_dec.wall, "items": n,
                                 "frames": sum(len(b) for b in blobs)})
        shapes = []  # (frames, objects) per item; the outputs themselves are dropped at once
        with Timer() as t_pipe:
            for rec, s in zip(records, seeds):
                out = transform.random_map(rec, np.random.default_rng(s))
                shapes.append((out["images"].shape[0], int(out["obj_valid"].sum())))
        del out
        frames_per_item += [f for f, _ in shapes]
        masks_used += [k for _, k in shapes]
        passes["pipeline"].append({"cpu_s": t_pipe.cpu, "wall_s": t_pipe.wall, "items": n,
                                   "frames": sum(f for f, _ in shapes)})
    rate = lambda key, clock, unit: _median([p[unit] / p[clock] for p in passes[key]])
    read_cpu = _median([p["cpu_s"] / p["items"] for p in passes["read"]])
    pipe_cpu = _median([p["cpu_s"] / p["items"] for p in passes["pipeline"]])
    return {
        "records": n, "passes": repeats,
        "frames_per_item": _median(frames_per_item),
        "objects_per_item_mean": float(np.mean(masks_used)),
        "decode_frames_per_s": rate("decode", "cpu_s", "frames"),
        "decode_frames_per_s_wall": rate("decode", "wall_s", "frames"),
        "decode_items_per_s": rate("decode", "cpu_s", "items"),
        "pipeline_frames_per_s": rate("pipeline", "cpu_s", "frames"),
        "pipeline_frames_per_s_wall": rate("pipeline", "wall_s", "frames"),
        "pipeline_items_per_s": rate("pipeline", "cpu_s", "items"),
        "read_s_per_item": read_cpu,
        # what one core of a Grain worker does per element: read + transform
        "pipeline_with_read_items_per_s": 1.0 / (pipe_cpu + read_cpu),
        "ratio_pipeline_over_decode": (rate("pipeline", "cpu_s", "frames")
                                       / rate("decode", "cpu_s", "frames")),
        "passes_detail": passes,
    }


def stage_breakdown(frames: list[bytes], frame_masks: list[list[bytes]], mask_hw, params,
                    aug, repeats: int = 3) -> dict:
    """Milliseconds per stage of `examples.render` for one item, stage by stage (the same
    calls, best of `repeats`): JPEG decode (DCT-scaled); the masks, either as RLE decode then
    mask warps (`augment.warp_mask_fortran` on pycocotools' Fortran-order masks; an affine
    map) or in one step from their runs (`rle_gather.decode_gather`; a resize / flip, as
    `examples.render` does); image warp; colour. The
    affine-retry path is left out; each stage runs over all frames / masks at once, so the sum
    can differ from the whole transform's time (cache effects)."""
    from input_pipeline import augment, examples, jpeg, rle_gather

    s = aug.resolution
    best: dict[str, float] = {}

    def stage(name, fn, *args):
        t0 = time.process_time()
        out = fn(*args)
        best[name] = min(best.get(name, float("inf")), time.process_time() - t0)
        return out

    def decode(blobs):
        return [jpeg.decode_at_least(f, s) for f in blobs]

    def rles(rows):
        return [examples._decode_rle(c, mask_hw) for row in rows for c in row]

    def warp_images(images, fwd):
        return [augment.warp_image(d, fwd, s) for d in images]

    def warp_masks(masks, mfwd):  # pycocotools' Fortran-order masks, as the pipeline warps
        return [augment.warp_mask_fortran(m, mfwd, s) for m in masks]

    def colour(images):
        return [augment.apply_colour(im, augment.frame_colour_ops(params, t))
                for t, im in enumerate(images)]

    def masks_from_runs(rows, picks):  # resize / flip: runs -> output grid (rle_gather)
        grid = rle_gather.Grid(*picks)
        return [rle_gather.decode_gather(c, mask_hw, grid) for row in rows for c in row]

    for _ in range(repeats):
        decoded = stage("jpeg_decode", decode, frames)
        frame_hw = decoded[0].shape[:2]
        fwd = augment.geometry(params, frame_hw, s)
        mfwd = augment.mask_forward(fwd, frame_hw, mask_hw)
        picks = augment.gather_indices(mfwd, mask_hw, s)
        if picks is None:  # an affine: full decode, then OpenCV's warp
            raw = stage("rle_decode", rles, frame_masks)
            stage("mask_warp", warp_masks, raw, mfwd)
        else:
            stage("masks_from_runs", masks_from_runs, frame_masks, picks)
        images = stage("image_warp", warp_images, decoded, fwd)
        stage("colour", colour, images)
    ms = {k: round(v * 1e3, 3) for k, v in best.items()}
    ms["total"] = round(sum(best.values()) * 1e3, 3)
    return {"frames": len(frames), "masks": sum(len(r) for r in frame_masks),
            "decoded_hw": list(frame_hw), "mask_hw": list(mask_hw), "ms": ms}


def breakdowns(sources: dict, cfg) -> dict:
    """Stage breakdown of record 0 of each dataset (seed 0), with the transform's own time."""
    import numpy as np

    from input_pipeline import augment, examples, sampling

    out = {}
    rec = sources["sav"][0]
    rng = np.random.default_rng(0)
    aug = cfg.augment_for("sav")
    choice = sampling.sample_clip(rec, rng, cfg.clip)
    params = augment.sample_params(rng, aug, cfg.clip.num_frames)
    n_obj = int(rec["num_objects"])
    rles = rec["masklet_rles"]
    out["sav"] = stage_breakdown(
        [rec["frames"][p] for p in choice.positions],
        [[rles[p * n_obj + k] for k in choice.objects] for p in choice.positions],
        (int(rec["orig_height"]), int(rec["orig_width"])), params, aug)
    out["sav"]["transform_ms"] = _transform_ms(
        examples.VideoClip(sources["sav"], cfg.clip, aug, cfg.output), rec)
    for name in ("sa1b", "sa1b_1024"):
        rec = sources[name][0]
        rng = np.random.default_rng(0)
        aug = cfg.augment_for("sa1b")
        chosen = sampling.sample_masks(rec, rng, cfg.image)
        params = augment.sample_params(rng, aug, 1)
        out[name] = stage_breakdown(
            [rec["image"]], [[rec["mask_rles"][k] for k in chosen]],
            (int(rec["height"]), int(rec["width"])), params, aug)
        out[name]["transform_ms"] = _transform_ms(
            examples.ImageSample(sources[name], cfg.image, aug, cfg.output), rec)
    return out


def _transform_ms(transform, record, repeats: int = 3) -> float:
    import numpy as np

    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        transform.random_map(record, np.random.default_rng(0))
        best = min(best, time.process_time() - t0)
    return round(best * 1e3, 3)


def bench_grain(spec, cfg, batches: int) -> dict:
    """`pipeline.build` in process (threads, no worker processes): wall rate, and process CPU
    per item to compare with the direct loop's (the difference is Grain's wrapping)."""
    from input_pipeline import pipeline

    it = iter(pipeline.build([spec], cfg, process_index=0, process_count=1))
    next(it)  # warm-up: thread pool start, first records
    with Timer() as t:
        for _ in range(batches):
            next(it)
    items = batches * spec.batch_size
    return {"batches": batches, "batch_size": spec.batch_size, "threads": cfg.num_threads,
            "prefetch_buffer_size": cfg.prefetch_buffer_size,
            "batches_per_s_wall": batches / t.wall, "items_per_s_wall": items / t.wall,
            "cpu_s_per_item": t.cpu / items,
            "note": "after 1 warm-up batch; up to prefetch_buffer_size batches may have been "
                    "made before the timer started"}


# ------------------------------------------------------------------------------ arithmetic

def tpu_arithmetic(results: dict, args) -> dict:
    """Per-host demand for a v5e pod and the cores it takes at the measured rates."""
    hosts = max(1, args.chips // CHIPS_PER_HOST)
    per_host_batch = GLOBAL_BATCH / hosts
    open_total = MIX_PAPER["sav"] + MIX_PAPER["sa1b"]
    p_sav, p_sa1b = MIX_PAPER["sav"] / open_total, MIX_PAPER["sa1b"] / open_total
    clips_s = p_sav * per_host_batch / args.step_seconds
    images_s = p_sa1b * per_host_batch / args.step_seconds
    sav_rate = results["sav"]["pipeline_with_read_items_per_s"]
    cores_sav = clips_s / sav_rate
    variants = {}
    for name in ("sa1b", "sa1b_1024"):
        img_rate = results[name]["pipeline_with_read_items_per_s"]
        cores = cores_sav + images_s / img_rate
        variants[name] = {
            "sa1b_images_per_s_per_core": img_rate,
            "cores_sa1b": images_s / img_rate,
            "cores_total": cores,
            "fraction_of_physical_cores": cores / HOST_PHYSICAL_CORES,
            "suffices": cores <= HOST_PHYSICAL_CORES,
            # steps are all-video or all-image: without buffering across steps, a host must
            # make a whole step's batch of one kind within one step time
            "cores_video_step_unbuffered": per_host_batch / args.step_seconds / sav_rate,
            "cores_image_step_unbuffered": per_host_batch / args.step_seconds / img_rate,
        }
    frames = args.clip_frames
    at_target = (clips_s * frames / TARGET_SAV_FRAMES_PER_S
                 + images_s / TARGET_SA1B_IMAGES_PER_S)
    return {
        "kind": "arithmetic, not measured",
        "assumptions": {
            "tpu": "v5e (v5litepod host)", "chips_per_host": CHIPS_PER_HOST,
            "host_vcpus": HOST_VCPUS, "host_physical_cores": HOST_PHYSICAL_CORES,
            "cores_counted": "physical cores only (hyperthreads add far less than 2x)",
            "global_batch": GLOBAL_BATCH, "chips": args.chips, "hosts": hosts,
            "step_seconds": args.step_seconds, "clip_frames": frames,
            "mixture_paper": MIX_PAPER,
            "mixture_used": {"sav": round(p_sav, 4), "sa1b": round(p_sa1b, 4)},
            "mixture_note": "the Internal data (14.8 %) is not available: SA-V and SA-1B "
                            "renormalised to their share of the open data",
            "rates": "measured single-core rates including the record read, this machine; "
                     "the host's cores are assumed equally fast",
        },
        "per_host_batch_per_step": per_host_batch,
        "sav_clips_per_s": clips_s, "sav_frames_per_s": clips_s * frames,
        "sa1b_images_per_s": images_s,
        "sav_clips_per_s_per_core": sav_rate, "cores_sav": cores_sav,
        "by_sa1b_variant": variants,
        "cores_total_at_targets": at_target,
    }


# ---------------------------------------------------------------------------------- output

def meta(args, argv, load_start) -> dict:
    return {
        "what": "input pipeline throughput per CPU core (one process, one thread) vs the JPEG "
                "decode ceiling; synthetic SA-V / SA-1B prepared with input_pipeline.prepare",
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus",
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "versions": package_versions(VERSIONED),
        "command": "python scripts/benchmark_input.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "sizes": data_sizes(args) | {"resolution": args.resolution,
                                     "clip_frames": args.clip_frames,
                                     "clip_objects": args.clip_objects,
                                     "max_masks": args.max_masks},
        "repeats": args.repeats, "clock": "process CPU time (wall rates also given)",
    }


def table(results: dict, tpu: dict | None) -> str:
    rows = [("sav", "SA-V clip (8 fr, 3 obj)", "frames/s", TARGET_SAV_FRAMES_PER_S),
            ("sa1b", "SA-1B original", "images/s", TARGET_SA1B_IMAGES_PER_S),
            ("sa1b_1024", "SA-1B pre-shrunk 1024", "images/s", TARGET_SA1B_IMAGES_PER_S)]
    lines = [f"{'dataset':<25}{'pipeline/core':>16}{'decode ceil/core':>19}{'ratio':>7}"
             f"{'target':>24}{'met?':>12}"]
    for key, label, unit, target in rows:
        r = results[key]
        pipe, dec = r["pipeline_frames_per_s"], r["decode_frames_per_s"]
        ratio = r["ratio_pipeline_over_decode"]
        met = (f"{'yes' if pipe >= target else 'no'} / "
               f"{'yes' if ratio >= TARGET_RATIO else 'no'}")
        lines.append(f"{label:<25}{pipe:>7.2f} {unit:<8}{dec:>10.2f} {unit:<8}{ratio:>7.2f}"
                     f"{f'>={target:g} {unit}, >={TARGET_RATIO}':>24}{met:>12}")
    lines.append("met? = rate / ratio. Per core = process CPU time, one thread. Objects per "
                 "item (mean): " + ", ".join(
                     f"{k} {results[k]['objects_per_item_mean']:.1f}" for k, *_ in rows))
    lines.append("record read (array_record + parse) per item, ms: " + ", ".join(
        f"{k} {results[k]['read_s_per_item'] * 1e3:.1f}" for k, *_ in rows))
    if tpu:
        a = tpu["assumptions"]
        lines.append(
            f"\nTPU v5e host ARITHMETIC (not measured): {a['chips']} chips = {a['hosts']} hosts "
            f"x {a['chips_per_host']} chips, {a['host_physical_cores']} physical cores "
            f"({a['host_vcpus']} vCPUs) per host; global batch {a['global_batch']}, "
            f"{a['step_seconds']:g} s/step, mixture SA-V {a['mixture_used']['sav']:.3f} / "
            f"SA-1B {a['mixture_used']['sa1b']:.3f} (Internal absent, renormalised)")
        lines.append(f"  per host: {tpu['sav_clips_per_s']:.2f} SA-V clips/s "
                     f"({tpu['sav_frames_per_s']:.1f} frames/s) -> {tpu['cores_sav']:.2f} cores; "
                     f"{tpu['sa1b_images_per_s']:.2f} SA-1B images/s")
        for name, v in tpu["by_sa1b_variant"].items():
            lines.append(f"  with {name:<10}: SA-1B {v['cores_sa1b']:.2f} cores, total "
                         f"{v['cores_total']:.2f} of {a['host_physical_cores']} "
                         f"({v['fraction_of_physical_cores']:.0%}) -> "
                         f"{'suffices' if v['suffices'] else 'DOES NOT suffice'}; unbuffered "
                         f"all-video step {v['cores_video_step_unbuffered']:.2f} cores, "
                         f"all-image step {v['cores_image_step_unbuffered']:.2f}")
        lines.append(f"  at the targets' rates: {tpu['cores_total_at_targets']:.2f} cores")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--resolution", type=int, default=1024, help="square training resolution")
    p.add_argument("--videos", type=int, default=6, help="SA-V videos synthesised")
    p.add_argument("--frames", type=int, default=48,
                   help="24 fps frames per video (annotated every 4th; >= 29 for 8-frame clips)")
    p.add_argument("--video-hw", type=int, nargs=2, default=[768, 1024], metavar=("H", "W"),
                   help="video frame size (even)")
    p.add_argument("--video-objects", type=int, default=4,
                   help="annotated objects per video (one leaves the frame for a while, so 4 "
                        "usually leave 3 visible for the 3-object clips)")
    p.add_argument("--images", type=int, default=6, help="SA-1B images synthesised")
    p.add_argument("--image-hw", type=int, nargs=2, default=[1500, 2250], metavar=("H", "W"),
                   help="SA-1B image size (SA-1B: 1500 x 2250 typical)")
    p.add_argument("--masks", type=int, default=64,
                   help="masks per SA-1B image (plus an empty and a > 90 %% one that the "
                        "pipeline drops)")
    p.add_argument("--sa1b-masks", choices=["overlapping", "scene"], default="overlapping",
                   help="overlapping: every mask its own object, all usable (as SA-1B's "
                        "nested masks); scene: synthetic.write_sa1b_tar, the visible parts of "
                        "one scene (about 42 of 64 survive occlusion)")
    p.add_argument("--max-masks", type=int, default=64, help="masks sampled per image")
    p.add_argument("--clip-frames", type=int, default=8, help="frames per SA-V clip")
    p.add_argument("--clip-objects", type=int, default=3, help="objects per SA-V clip")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed passes over all records, for decode and pipeline each")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--grain", action=argparse.BooleanOptionalAction, default=True,
                   help="also time pipeline.build end to end (default on)")
    p.add_argument("--grain-batches", type=int, default=6, help="timed batches per dataset")
    p.add_argument("--grain-threads", type=int, default=2, help="Grain read threads")
    p.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                   help="per-stage times of one clip / image (default on)")
    p.add_argument("--chips", type=int, default=256, help="TPU v5e chips in the pod")
    p.add_argument("--step-seconds", type=float, default=1.0,
                   help="assumed training step time for the host arithmetic")
    p.add_argument("--json", default="artifacts/benchmark_input.json", help="output")
    p.add_argument("--workdir", default=None,
                   help="where the data is made (kept, and reused when the sizes match); "
                        "default a temporary folder, removed at the end unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    args = p.parse_args(argv)
    if args.video_hw[0] % 2 or args.video_hw[1] % 2:
        p.error("--video-hw must be even (H.264 yuv420p)")
    if args.resolution % 8:
        p.error("--resolution must be a multiple of 8")
    if -(-args.frames // 4) < args.clip_frames:
        p.error(f"--frames {args.frames} gives {-(-args.frames // 4)} annotated frames, fewer "
                f"than --clip-frames {args.clip_frames}")
    if min(args.videos, args.images) < 2:
        p.error("--videos and --images must be >= 2 (Grain batches of 2)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    load_start = list(os.getloadavg())

    import cv2

    cv2.setNumThreads(1)  # per-core figures: OpenCV would otherwise use every core

    from input_pipeline import examples, pipeline, sampling

    own_tmp = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="benchmark_input_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        dirs = build_data(args, workdir)
        cfg = pipeline.PipelineConfig(
            resolution=args.resolution, seed=0,
            clip=sampling.ClipConfig(num_frames=args.clip_frames, max_objects=args.clip_objects),
            image=sampling.ImageConfig(max_masks=args.max_masks),
            num_workers=0, num_threads=args.grain_threads,
            prefetch_buffer_size=args.grain_threads)
        specs = {d: pipeline.SourceSpec("sav" if d == "sav" else "sa1b", dirs[d], batch_size=2)
                 for d in DATASETS}
        sources = {d: pipeline.open_source(s) for d, s in specs.items()}

        results = {}
        for d in DATASETS:
            log(f"timing {d}: {len(sources[d])} records x {args.repeats} passes ...")
            if d == "sav":
                transform = examples.VideoClip(sources[d], cfg.clip, cfg.augment_for("sav"),
                                               cfg.output)
                jpegs_for = lambda rec, seed: clip_jpegs(rec, seed, cfg.clip)
            else:
                transform = examples.ImageSample(sources[d], cfg.image, cfg.augment_for("sa1b"),
                                                 cfg.output)
                jpegs_for = lambda rec, seed: [rec["image"]]
            results[d] = bench_dataset(sources[d], transform, jpegs_for, args.repeats)
            r = results[d]
            log(f"  pipeline {r['pipeline_frames_per_s']:.2f} frames/s, decode ceiling "
                f"{r['decode_frames_per_s']:.2f} frames/s, ratio "
                f"{r['ratio_pipeline_over_decode']:.2f}")

        extra = {}
        if args.breakdown:
            log("per-stage breakdown ...")
            extra["stage_breakdown"] = breakdowns(sources, cfg)
        if args.grain:
            extra["grain"] = {}
            for d in ("sav", "sa1b"):
                log(f"Grain end to end, {d}: {args.grain_batches} batches of 2, "
                    f"{args.grain_threads} threads ...")
                g = bench_grain(specs[d], cfg, args.grain_batches)
                direct_cpu = 1.0 / results[d]["pipeline_with_read_items_per_s"]
                g["direct_cpu_s_per_item"] = direct_cpu
                g["grain_cpu_over_direct"] = g["cpu_s_per_item"] / direct_cpu
                extra["grain"][d] = g
        tpu = tpu_arithmetic(results, args)

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta(args, argv, load_start), "results": results,
                                   **extra, "tpu_v5e_host_arithmetic": tpu}, indent=2))
        print()
        print(table(results, tpu))
        if "stage_breakdown" in extra:
            print("\nper-stage ms (one item, best of 3, CPU):")
            for d, b in extra["stage_breakdown"].items():
                stages = ", ".join(f"{k} {v:.1f}" for k, v in b["ms"].items())
                print(f"  {d:<10} {b['frames']} frames, {b['masks']} masks, decoded "
                      f"{b['decoded_hw'][0]}x{b['decoded_hw'][1]}: {stages}; whole transform "
                      f"{b['transform_ms']:.1f}")
        if "grain" in extra:
            print("\nGrain end to end (in process, threads):")
            for d, g in extra["grain"].items():
                print(f"  {d:<10} {g['batches_per_s_wall']:.2f} batches/s wall "
                      f"({g['items_per_s_wall']:.2f} items/s, {g['threads']} threads); CPU per "
                      f"item {g['cpu_s_per_item'] * 1e3:.0f} ms vs direct "
                      f"{g['direct_cpu_s_per_item'] * 1e3:.0f} ms "
                      f"(x{g['grain_cpu_over_direct']:.2f})")
        print(f"\nJSON: {out}")
    finally:
        if own_tmp and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"data kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
