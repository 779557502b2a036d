#!/usr/bin/env python
"""Prepare SA-1B, SA-V or DAVIS-style folders into a TFDS array_record dataset.

    python scripts/prepare_data.py sa1b --manual_dir /data/sa1b_tars --data_dir /data/tfds
    python scripts/prepare_data.py sav  --manual_dir /data/sav_tars  --data_dir /data/tfds \
        --num_workers 16 --max_side 1024
    python scripts/prepare_data.py davis --manual_dir /data/DAVIS --data_dir /data/tfds \
        --frame_stride 4 --heldout_list ImageSets/2017/val.txt

DAVIS-style: --manual_dir holds JPEGImages/<resolution>/<video>/*.jpg and palette
Annotations/<resolution>/<video>/*.png (or JPEGImages/<video>/ ...); a shard is a group of
--videos_per_shard videos; --frame_stride 4 keeps every 4th frame (SA-V's 6 fps from 24 fps;
default 1: every frame); videos named in --heldout_list go to the split --heldout_split.

Shards are converted in parallel worker processes; the preparation can be killed and run
again: finished shards are kept, nothing half-written is ever visible. Corrupt inputs
(truncated JPEG / tar, broken mp4, RLE of the wrong size, JSON missing keys, empty masklets,
a frame without annotation, an unreadable PNG, sizes that disagree) are skipped, counted and
listed in <data_dir>/<name>/<version>/prepare_report.json. Read the result with
`tfds.data_source("sa1b" | "sav" | "davis:1.0.0", split="train", data_dir=...)` or
`input_pipeline.pipeline`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("dataset", choices=["sa1b", "sav", "davis"],
                   help="which dataset the shards are")
    p.add_argument("--manual_dir", required=True,
                   help="folder holding the original tars (sa_XXXXXX.tar / sav_XXX.tar), or "
                        "the DAVIS-style root (JPEGImages/, Annotations/)")
    p.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
    p.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="worker processes, one shard each at a time (0 = in this process); "
                        "default: CPUs - 1")
    p.add_argument("--max_side", type=int, default=None,
                   help="cap on the stored long side: SA-V / DAVIS frames (default 1024), "
                        "SA-1B images (default: keep the originals; masks are re-encoded when "
                        "shrunk). 0 = keep the original size")
    p.add_argument("--jpeg_quality", type=int, default=95, help="for re-encoded JPEGs")
    p.add_argument("--masklets", choices=["manual", "manual+auto"], default="manual",
                   help="SA-V: which masklets to keep (SAM 2 trains on manual)")
    p.add_argument("--resolution", default="480p",
                   help="DAVIS: the JPEGImages/<resolution> level (a flat layout ignores it)")
    p.add_argument("--frame_stride", type=int, default=1,
                   help="DAVIS: keep every n-th frame (4: SA-V's 6 fps from 24 fps)")
    p.add_argument("--heldout_list", default=None,
                   help="DAVIS: file of video ids (one a line) for a held-out split; "
                        "relative to --manual_dir unless found from here")
    p.add_argument("--heldout_split", default="val", help="DAVIS: the held-out split's name")
    p.add_argument("--videos_per_shard", type=int, default=8, help="DAVIS: videos per shard")
    p.add_argument("--keep_work", action="store_true",
                   help="keep the per-shard work files after assembling the dataset")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from input_pipeline.prepare import default_config, prepare

    config = default_config(args.dataset)
    changes = {"jpeg_quality": args.jpeg_quality}
    if args.max_side is not None:
        changes["max_side"] = args.max_side or None
    if args.dataset == "sav":
        changes["masklets"] = args.masklets
    if args.dataset == "davis":
        heldout = args.heldout_list
        if heldout and os.path.exists(heldout):
            heldout = os.path.abspath(heldout)
        changes.update(resolution=args.resolution, frame_stride=args.frame_stride,
                       heldout_list=heldout, heldout_split=args.heldout_split,
                       videos_per_shard=args.videos_per_shard)
    try:
        config = dataclasses.replace(config, **changes)
    except ValueError as e:
        p.error(str(e))
    if not os.path.isdir(args.manual_dir):
        p.error(f"--manual_dir {args.manual_dir} is not a folder")
    report = prepare(args.dataset, args.manual_dir, args.data_dir, config,
                     num_workers=args.num_workers, progress=not args.no_progress,
                     keep_work=args.keep_work)
    print(f"{report['dataset']} {report['version']}: {report['examples']} examples from "
          f"{report['shards']} shards; skipped {sum(report['skipped_by_kind'].values())} "
          f"{report['skipped_by_kind'] or ''}")
    if len(report["split_examples"]) > 1:
        print("examples per split:", report["split_examples"])
    print("report:", os.path.join(args.data_dir, report["dataset"], report["version"],
                                  "prepare_report.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
