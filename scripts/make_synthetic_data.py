#!/usr/bin/env python
"""Write synthetic SA-1B / SA-V / SA-V val / DAVIS data in the exact original formats.

    python scripts/make_synthetic_data.py --out /tmp/synthetic            # everything, small
    python scripts/make_synthetic_data.py --out /tmp/s --kinds sav --shards 4 --per_shard 8 \
        --height 480 --width 848 --frames 96

Layout written under --out:
    sa1b/sa_000000.tar ...       SA-1B shards (sa_<id>.jpg + sa_<id>.json)
    sav/sav_000.tar ...          SA-V train tars (sav_train/sav_0XX/*.mp4 + _manual/_auto.json)
    sav_val/                     SA-V val layout (JPEGImages_24fps, Annotations_6fps, sav_val.txt)
    davis/                       DAVIS-2017 layout (JPEGImages/480p, palette Annotations/480p)
The scenes are a real tracking task (textured objects moving, scaling, occluding, leaving and
re-entering, look-alike distractors); everything is seeded (--seed). Feed sa1b/ and sav/ to
scripts/prepare_data.py as --manual_dir.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("sa1b", "sav", "sav_val", "davis")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--shards", type=int, default=2, help="tars per dataset (sa1b, sav)")
    p.add_argument("--per_shard", type=int, default=4, help="images / videos per tar")
    p.add_argument("--height", type=int, default=96, help="frame / image height (even)")
    p.add_argument("--width", type=int, default=128, help="frame / image width (even)")
    p.add_argument("--frames", type=int, default=40, help="24 fps frames per video")
    p.add_argument("--objects", type=int, default=3,
                   help="annotated objects per video (SA-1B images: 3 more masks)")
    p.add_argument("--seed", type=int, default=0)
    # scene difficulty: object sizes of every kind; speeds of the videos (sav, sav_val, davis)
    p.add_argument("--object_size", type=float, nargs=2, default=(0.08, 0.2),
                   metavar=("LO", "HI"),
                   help="object half-extent range (videos and images), fraction of "
                   "min(height, width)")
    p.add_argument("--object_speed", type=float, nargs=2, default=(0.3, 1.5),
                   metavar=("LO", "HI"), help="object travel over a video (bouncing off the "
                   "borders), fraction of min(height, width)")
    p.add_argument("--distractors", type=int, default=1, help="look-alike distractors per video")
    args = p.parse_args(argv)
    if args.height % 2 or args.width % 2:
        p.error("--height and --width must be even (H.264 yuv420p)")

    from tqdm import tqdm

    from input_pipeline import synthetic

    try:
        scene = synthetic.SceneConfig(tuple(args.object_size), tuple(args.object_speed),
                                      args.distractors)
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out)
    jobs = []
    if "sa1b" in args.kinds:
        (out / "sa1b").mkdir(parents=True, exist_ok=True)
        for i in range(args.shards):
            jobs.append((f"sa1b/sa_{i:06d}.tar", lambda i=i: synthetic.write_sa1b_tar(
                out / "sa1b" / f"sa_{i:06d}.tar", 1 + i * args.per_shard, args.per_shard,
                args.height, args.width, seed=args.seed + i, n_masks=args.objects + 3,
                scene=scene)))
    if "sav" in args.kinds:
        (out / "sav").mkdir(parents=True, exist_ok=True)
        for i in range(args.shards):
            ids, tar_seed = synthetic.train_shard_videos(i, args.per_shard, args.seed)
            jobs.append((f"sav/sav_{i:03d}.tar", lambda i=i, ids=ids, s=tar_seed: (
                synthetic.write_sav_tar(out / "sav" / f"sav_{i:03d}.tar", ids, args.height,
                                        args.width, args.frames, args.objects, seed=s,
                                        folder=f"sav_{i:03d}", scene=scene))))
    if "sav_val" in args.kinds:
        vids = [f"sav_{900000 + k:06d}" for k in range(args.per_shard)]
        jobs.append(("sav_val/", lambda: synthetic.write_sav_eval_folder(
            out / "sav_val", vids, args.height, args.width, args.frames, args.objects,
            seed=args.seed, scene=scene)))
    if "davis" in args.kinds:
        vids = [f"video{k:02d}" for k in range(args.per_shard)]
        jobs.append(("davis/", lambda: synthetic.write_davis_folder(
            out / "davis", vids, args.height, args.width, args.frames, args.objects,
            seed=args.seed, scene=scene)))
    for name, job in tqdm(jobs, desc="synthetic data", unit="part"):
        job()
        tqdm.write(f"wrote {os.path.join(args.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
