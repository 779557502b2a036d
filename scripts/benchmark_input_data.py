"""The synthetic data of `scripts/benchmark_input.py`: raw SA-V / SA-1B tars in the real
formats, prepared into the three TFDS datasets the benchmark times.

    dirs = build_data(args, workdir)   # {"sav" | "sa1b" | "sa1b_1024": prepared data_dir}

`args` are the benchmark's parsed flags (sizes, seed, --sa1b-masks). A workdir whose
`sizes.json` matches the flags and whose datasets are all prepared is reused as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

DATASETS = ("sav", "sa1b", "sa1b_1024")  # data_dir subfolders; sa1b_1024 = pre-shrunk


def log(msg: str) -> None:
    print(f"[benchmark input] {msg}", flush=True)


def data_sizes(args) -> dict:
    """Everything that decides the synthetic data (a reused --workdir must match it)."""
    return {"videos": args.videos, "frames": args.frames, "video_hw": list(args.video_hw),
            "video_objects": args.video_objects, "images": args.images,
            "image_hw": list(args.image_hw), "masks": args.masks,
            "sa1b_masks": args.sa1b_masks, "seed": args.seed}


def _prepared(data_dir: Path, name: str) -> bool:
    return (data_dir / name / "1.0.0" / "dataset_info.json").exists()


def build_data(args, workdir: Path) -> dict[str, str]:
    """Synthesise the raw tars and prepare the three datasets -> {dataset: data_dir}."""
    from input_pipeline import prepare, synthetic
    from input_pipeline.tfds_builders.sa1b import Sa1bConfig
    from input_pipeline.tfds_builders.sav import SavConfig

    dirs = {d: workdir / "data" / d for d in DATASETS}
    marker = workdir / "sizes.json"
    tfds_name = {"sav": "sav", "sa1b": "sa1b", "sa1b_1024": "sa1b"}
    if (marker.exists() and json.loads(marker.read_text()) == data_sizes(args)
            and all(_prepared(dirs[d], tfds_name[d]) for d in DATASETS)):
        log(f"reusing the prepared data in {workdir}")
        return {d: str(p) for d, p in dirs.items()}
    marker.unlink(missing_ok=True)
    raw_sav, raw_sa1b = workdir / "raw" / "sav", workdir / "raw" / "sa1b"
    raw_sav.mkdir(parents=True, exist_ok=True)
    raw_sa1b.mkdir(parents=True, exist_ok=True)

    h, w = args.video_hw
    log(f"synthesising {args.videos} SA-V videos, {args.frames} frames of {h}x{w}, "
        f"{args.video_objects} objects ...")
    t0 = time.perf_counter()
    # auto=False: the auto masklets are not used for training (SavConfig masklets="manual")
    # and would double the synthesis time
    synthetic.write_sav_tar(raw_sav / "sav_000.tar", list(range(args.videos)), h, w,
                            args.frames, args.video_objects, seed=args.seed, auto=False)
    log(f"  {time.perf_counter() - t0:.1f} s")

    h, w = args.image_hw
    log(f"synthesising {args.images} SA-1B images of {h}x{w} with {args.masks} masks ...")
    t0 = time.perf_counter()
    write_sa1b = (write_sa1b_overlapping_tar if args.sa1b_masks == "overlapping"
                  else synthetic.write_sa1b_tar)
    write_sa1b(raw_sa1b / "sa_000000.tar", 1, args.images, h, w, seed=args.seed,
               n_masks=args.masks)
    log(f"  {time.perf_counter() - t0:.1f} s")

    jobs = [("sav", "sav", raw_sav, SavConfig()),
            ("sa1b", "sa1b", raw_sa1b, Sa1bConfig(max_side=None)),
            ("sa1b_1024", "sa1b", raw_sa1b, Sa1bConfig(max_side=1024))]
    for d, kind, raw, config in jobs:
        log(f"preparing {d} ({config}) ...")
        t0 = time.perf_counter()
        shutil.rmtree(dirs[d], ignore_errors=True)
        report = prepare.prepare(kind, str(raw), str(dirs[d]), config, num_workers=0,
                                 progress=True)
        log(f"  {report['examples']} examples, {len(report['skipped'])} skipped, "
            f"{time.perf_counter() - t0:.1f} s")
    marker.write_text(json.dumps(data_sizes(args)))
    return {d: str(p) for d, p in dirs.items()}


def write_sa1b_overlapping_tar(path, first_id: int, num_images: int, h: int, w: int,
                               seed: int = 0, n_masks: int = 64) -> list[int]:
    """An SA-1B tar like `synthetic.write_sa1b_tar` (same JSON schema, JPEG q90, plus the empty
    and the > 90 % mask the pipeline drops), but with n_masks masks that overlap freely, as
    SA-1B's whole / part / subpart masks do. synthetic's masks are the visible parts of one
    scene: with 64 objects about 2/3 are occluded away (~42 usable), and the benchmark would
    time fewer masks than the 64 the paper samples. Each mask here is one object of its own
    one-object render (always in view); the image is a separate 8-object scene."""
    import io
    import tarfile

    import numpy as np

    from input_pipeline import jpeg, synthetic

    rng = np.random.default_rng(seed)
    ids = []
    with tarfile.open(path, "w") as tar:
        for i in range(num_images):
            image_id = first_id + i
            base = seed * 100_003 + image_id
            image, _ = synthetic.sa1b_image(base, h, w, n_masks=8)
            masks = np.empty((n_masks + 2, h, w), bool)
            for k in range(n_masks):
                masks[k] = synthetic.render_video(
                    base * 1000 + k, h, w, 1, n_objects=1,
                    scene=synthetic.SceneConfig(distractors=0))[1][0, 0]
            masks[n_masks] = False  # area 0: dropped by the pipeline
            masks[n_masks + 1] = True
            masks[n_masks + 1, : max(1, h // 40)] = False  # 97.5 % of the image: dropped
            members = [(f"sa_{image_id}.jpg", jpeg.encode(image, quality=90)),
                       (f"sa_{image_id}.json",
                        json.dumps(synthetic.sa1b_json(image_id, masks, rng)).encode())]
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
            ids.append(image_id)
            log(f"  SA-1B image {i + 1}/{num_images}")
    return ids
