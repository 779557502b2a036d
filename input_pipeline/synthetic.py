"""Synthetic SA-1B / SA-V / DAVIS data in the exact raw formats, with a genuine tracking task.

Scenes (`render_video`): a smooth-noise background and textured objects (ellipses, rectangles,
triangles; striped / checkered / speckled) that move, scale and rotate, occlude each other
(visible masks exclude what lies on top), leave the frame and come back, plus unannotated
distractors that share an annotated object's shape and texture. Writers produce the formats
of data_and_eval.md byte-compatible with the real ones: SA-1B tars (`sa_<id>.jpg` + JSON,
members with and without `./`), SA-V train tars (`sav_train/sav_0XX/` H.264 mp4 at 24 fps,
manual + auto JSON with float `video_*` fields and all-zero RLEs for absent objects), SA-V
val/test folders (`L` 0/255 or `P` 0/1 PNGs) and DAVIS folders (palette PNGs). `corrupt_*`
make the broken inputs preparation must survive. Everything is seeded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tarfile
import time

import numpy as np
from PIL import Image

from input_pipeline import jpeg, rle
from input_pipeline.sav import ANNOTATION_EVERY

SHAPES = ("ellipse", "rectangle", "triangle")
PATTERNS = ("stripes", "checker", "speckle")


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How hard a scene is. radius: an object's half-extents as a fraction of min(H, W), drawn
    from [lo, hi]; speed: its displacement over a whole video as a fraction of min(H, W)
    (videos shorter than 8 frames move as if they had 8), drawn from [lo, hi]; distractors:
    unannotated look-alikes per video. The defaults are the scenes the tests were written on."""

    radius: tuple[float, float] = (0.08, 0.2)
    speed: tuple[float, float] = (0.3, 1.5)
    distractors: int = 1

    def __post_init__(self):
        for name in ("radius", "speed"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"SceneConfig.{name} must be 0 <= lo <= hi, got {(lo, hi)}")
        if self.distractors < 0:
            raise ValueError(f"SceneConfig.distractors must be >= 0, got {self.distractors}")


@dataclasses.dataclass
class ObjectSpec:
    """One moving object. Positions / sizes in pixels; angles in radians; per-frame motion."""

    shape: str
    pattern: str
    colors: np.ndarray  # (2, 3) uint8: pattern colours
    freq: float  # pattern spatial frequency (cycles / pixel)
    center: np.ndarray  # (2,) x, y at frame 0
    velocity: np.ndarray  # (2,) px / frame
    radius: np.ndarray  # (2,) half-extents at frame 0
    growth: float  # scale factor per frame
    angle: float
    spin: float
    depth: float  # larger = nearer (painted later)
    leaves: bool = False  # trajectory bounces out of the frame and back


def _smooth_noise(rng, h, w, cells=6):
    """Smooth colour background: bilinear upsampling of a coarse random grid, (H, W, 3) uint8."""
    coarse = rng.uniform(40, 215, size=(cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def random_objects(rng: np.random.Generator, h: int, w: int, n_objects: int,
                   n_frames: int = 1, scene: SceneConfig = SceneConfig(),
                   ) -> tuple[list[ObjectSpec], list[ObjectSpec]]:
    """Annotated objects and `scene.distractors` distractors (a distractor copies an annotated
    object's shape, pattern and colours and moves elsewhere). `scene` sets sizes and speeds."""
    scale = min(h, w)

    def one(leaves=False):
        r = rng.uniform(*scene.radius, size=2) * scale
        speed = rng.uniform(*scene.speed) * scale / max(n_frames, 8)
        theta = rng.uniform(0, 2 * math.pi)
        return ObjectSpec(
            shape=str(rng.choice(SHAPES)), pattern=str(rng.choice(PATTERNS)),
            colors=rng.integers(0, 256, size=(2, 3)).astype(np.uint8),
            freq=float(rng.uniform(0.05, 0.2)),
            center=np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h]),
            velocity=speed * np.array([math.cos(theta), math.sin(theta)]),
            radius=r, growth=float(rng.uniform(0.985, 1.015)),
            angle=float(rng.uniform(0, math.pi)), spin=float(rng.uniform(-0.05, 0.05)),
            depth=float(rng.uniform()), leaves=leaves)

    objects = [one(leaves=(k == 1)) for k in range(n_objects)]
    distractors = []
    for k in range(scene.distractors):
        d = one()
        if objects:
            src = objects[k % len(objects)]
            d = dataclasses.replace(d, shape=src.shape, pattern=src.pattern,
                                    colors=src.colors.copy(), freq=src.freq,
                                    radius=src.radius.copy())
        distractors.append(d)
    return objects, distractors


def _state(obj: ObjectSpec, t: int, h: int, w: int, n_frames: int):
    """Centre, half-extents and angle of `obj` on frame t."""
    c = obj.center + t * obj.velocity
    if obj.leaves:
        # out through the right edge in the first half of the clip, back in the second half
        half = max(n_frames // 2, 1)
        phase = t / half if t <= half else (n_frames - t) / max(n_frames - half, 1)
        c = obj.center + np.array([phase * 1.2 * w, 0.0])
    else:
        # bounce off the borders so ordinary objects stay mostly in view
        for i, size in ((0, w), (1, h)):
            period = 2 * size
            x = c[i] % period
            c[i] = x if x < size else period - x
    r = obj.radius * obj.growth**t
    return c, r, obj.angle + obj.spin * t


def _shape_mask(obj: ObjectSpec, c, r, angle, yy, xx):
    ca, sa = math.cos(angle), math.sin(angle)
    u = ((xx - c[0]) * ca + (yy - c[1]) * sa) / max(r[0], 1.0)
    v = (-(xx - c[0]) * sa + (yy - c[1]) * ca) / max(r[1], 1.0)
    if obj.shape == "ellipse":
        inside = u * u + v * v <= 1.0
    elif obj.shape == "rectangle":
        inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    else:  # triangle, apex up in object coordinates
        inside = (v <= 1.0) & (v >= 2.0 * np.abs(u) - 1.0)
    return inside, u * r[0], v * r[1]


def _texture(obj: ObjectSpec, lu, lv, rng_speckle):
    f = obj.freq
    if obj.pattern == "stripes":
        sel = np.sin(2 * math.pi * f * lu) > 0
    elif obj.pattern == "checker":
        sel = (np.floor(f * lu) + np.floor(f * lv)) % 2 == 0
    else:
        sel = rng_speckle.random(lu.shape) < 0.5
    return np.where(sel[..., None], obj.colors[0], obj.colors[1])


def render_video(seed: int, h: int, w: int, n_frames: int, n_objects: int = 3,
                 scene: SceneConfig = SceneConfig()) -> tuple[np.ndarray, np.ndarray]:
    """-> frames uint8 (T, H, W, 3), visible masks bool (T, N, H, W) of the annotated objects.

    Depth order is fixed per object, so nearer objects occlude farther ones; a mask is the
    object's visible part. Object 1 (when present) leaves the frame and re-enters it.
    """
    rng = np.random.default_rng(seed)
    objects, distractors = random_objects(rng, h, w, n_objects, n_frames, scene)
    background = _smooth_noise(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    everything = [(o, k) for k, o in enumerate(objects)] + [(d, -1) for d in distractors]
    everything.sort(key=lambda p: p[0].depth)  # far to near
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    masks = np.zeros((n_frames, n_objects, h, w), bool)
    speckle = np.random.default_rng(seed + 1)
    for t in range(n_frames):
        img = background.copy()
        for obj, k in everything:
            c, r, a = _state(obj, t, h, w, n_frames)
            inside, lu, lv = _shape_mask(obj, c, r, a, yy, xx)
            img[inside] = _texture(obj, lu, lv, speckle)[inside]
            masks[t, :, inside] = False  # occludes everything painted before it
            if k >= 0:
                masks[t, k] = inside
        frames[t] = img
    return frames, masks


# ---------------------------------------------------------------------------------- SA-1B
def sa1b_json(image_id: int, masks: np.ndarray, rng: np.random.Generator) -> dict:
    """The JSON of one SA-1B image with every field of the real schema, for masks (N, H, W)."""
    n, h, w = masks.shape
    anns = []
    for k in range(n):
        seg = rle.encode(masks[k])
        ys, xs = np.nonzero(masks[k])
        bbox = ([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                 float(ys.max() - ys.min() + 1)] if len(xs) else [0.0, 0.0, 0.0, 0.0])
        point = ([[float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5]] if len(xs)
                 else [[w / 2.0, h / 2.0]])
        anns.append({"bbox": bbox, "area": int(masks[k].sum()), "segmentation": seg,
                     "predicted_iou": round(float(rng.uniform(0.88, 1.0)), 6),
                     "point_coords": point, "crop_box": [0.0, 0.0, float(w), float(h)],
                     "id": int(image_id * 1000 + k),
                     "stability_score": round(float(rng.uniform(0.95, 1.0)), 6)})
    return {"image": {"image_id": int(image_id), "width": int(w), "height": int(h),
                      "file_name": f"sa_{image_id}.jpg"},
            "annotations": anns}


def sa1b_image(seed: int, h: int, w: int, n_masks: int = 6,
               scene: SceneConfig = SceneConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One SA-1B-like image and its masks (N + 2, H, W): N object masks, then an empty mask
    (area 0, filtered by the loader) and one covering > 90 % of the image (filtered too).
    `scene` sets the object sizes (and look-alikes: unannotated, as in the videos)."""
    frames, masks = render_video(seed, h, w, 1, n_objects=n_masks, scene=scene)
    big = np.ones((h, w), bool)
    big[: max(1, h // 40)] = False  # 97.5 % of the image
    extra = np.stack([np.zeros((h, w), bool), big])
    return frames[0], np.concatenate([masks[0], extra])


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    tar.addfile(info, io.BytesIO(data))


def write_sa1b_tar(path: str | os.PathLike, first_id: int, num_images: int, h: int = 150,
                   w: int = 200, seed: int = 0, n_masks: int = 6,
                   scene: SceneConfig = SceneConfig()) -> list[int]:
    """An SA-1B shard: `sa_<id>.jpg` / `sa_<id>.json` pairs, odd images' members prefixed
    `./`, the JSON before the JPEG for every third image. -> the image ids written."""
    rng = np.random.default_rng(seed)
    ids = []
    tmp = os.fspath(path) + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        for i in range(num_images):
            image_id = first_id + i
            image, masks = sa1b_image(seed * 100_003 + image_id, h, w, n_masks, scene)
            members = [(f"sa_{image_id}.jpg", jpeg.encode(image, quality=90)),
                       (f"sa_{image_id}.json",
                        json.dumps(sa1b_json(image_id, masks, rng)).encode())]
            if i % 3 == 2:
                members.reverse()
            for name, data in members:
                _add(tar, ("./" if i % 2 else "") + name, data, time.time())
            ids.append(image_id)
    os.replace(tmp, path)
    return ids


# ---------------------------------------------------------------------------------- SA-V
def encode_mp4(frames: np.ndarray, fps: int = 24, crf: int = 23) -> bytes:
    """uint8 (T, H, W, 3) -> H.264 mp4 bytes (libx264, yuv420p; H and W must be even)."""
    import av

    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def sav_json(video_id: str, masks: np.ndarray, n_frames: int, kind: str = "manual",
             rng: np.random.Generator | None = None) -> dict:
    """The annotation JSON of one SA-V video (every field of the real schema, real types).

    masks: bool (T_annotated, N, H, W) on frames 0, 4, 8, ...; kind "manual" or "auto".
    """
    rng = rng or np.random.default_rng(0)
    ta, n, h, w = masks.shape
    areas = masks.reshape(ta, n, -1).sum(-1)
    visible = areas > 0
    first = [int(np.argmax(visible[:, k])) if visible[:, k].any() else 0 for k in range(n)]
    changes = [int(np.sum(visible[first[k] + 1:, k] != visible[first[k]:-1, k])) for k in range(n)]
    mean_area = [float(areas[visible[:, k], k].mean()) if visible[:, k].any() else 0.0
                 for k in range(n)]
    bucket = ["small" if a < 32**2 else "medium" if a < 96**2 else "large" for a in mean_area]
    data = {
        "video_id": video_id,
        "video_duration": n_frames / 24.0,
        "video_frame_count": float(n_frames),
        "video_height": float(h),
        "video_width": float(w),
        "video_resolution": float(h * w),
        "video_environment": "Indoor",
        "video_split": "train",
        "masklet": [[rle.encode(masks[t, k]) for k in range(n)] for t in range(ta)],
        "masklet_id": list(range(n)),
        "masklet_size_rel": [a / (h * w) for a in mean_area],
        "masklet_size_abs": mean_area,
        "masklet_size_bucket": bucket,
        "masklet_visibility_changes": changes,
        "masklet_first_appeared_frame": ([float(f) for f in first] if kind == "manual"
                                         else [0 for _ in first]),
        "masklet_frame_count": [ta] * n,
        "masklet_edited_frame_count": ([int(rng.integers(1, ta + 1)) for _ in range(n)]
                                       if kind == "manual" else [0] * n),
        "masklet_type": [kind] * n,
        "masklet_stability_score": ([None] * n if kind == "manual" else
                                    [[round(float(rng.uniform(0.9, 1)), 4) for _ in range(n)]
                                     for _ in range(ta)]),
        "masklet_num": n,
    }
    return data


def sav_video(seed: int, h: int, w: int, n_frames: int, n_objects: int = 3,
              scene: SceneConfig = SceneConfig()):
    """-> frames (T, H, W, 3), annotated masks (ceil(T/4), N, H, W) on frames 0, 4, ..."""
    frames, masks = render_video(seed, h, w, n_frames, n_objects, scene=scene)
    return frames, masks[::ANNOTATION_EVERY]


def train_video_seed(seed: int, vid_num: int) -> int:
    """The render seed of video `sav_<vid_num>` in the SA-V train tar written with `seed`."""
    return seed * 7919 + vid_num


def train_shard_videos(shard: int, per_shard: int, seed: int) -> tuple[list[int], int]:
    """(video numbers, tar seed) of SA-V train tar number `shard` in a set written with `seed`:
    videos numbered from 1 across the tars, tar k seeded `seed + k` (make_synthetic_data.py)."""
    return [1 + shard * per_shard + j for j in range(per_shard)], seed + shard


def write_sav_tar(path: str | os.PathLike, video_ids: list[int], h: int = 96, w: int = 128,
                  n_frames: int = 40, n_objects: int = 3, seed: int = 0,
                  folder: str = "sav_000", auto: bool = True,
                  scene: SceneConfig = SceneConfig()) -> list[str]:
    """An SA-V train tar: `sav_train/<folder>/sav_XXXXXX.mp4` + `_manual.json` (+ `_auto.json`
    with one more object) per video. -> the video ids written."""
    rng = np.random.default_rng(seed)
    names = []
    tmp = os.fspath(path) + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        for vid_num in video_ids:
            vid = f"sav_{vid_num:06d}"
            frames, masks = sav_video(train_video_seed(seed, vid_num), h, w, n_frames, n_objects,
                                      scene)
            prefix = f"sav_train/{folder}/{vid}"
            _add(tar, f"{prefix}.mp4", encode_mp4(frames), time.time())
            if auto:
                _, auto_masks = sav_video(train_video_seed(seed, vid_num) + 1, h, w, n_frames,
                                          n_objects + 1, scene)
                _add(tar, f"{prefix}_auto.json",
                     json.dumps(sav_json(vid, auto_masks, n_frames, "auto", rng)).encode(),
                     time.time())
            _add(tar, f"{prefix}_manual.json",
                 json.dumps(sav_json(vid, masks, n_frames, "manual", rng)).encode(), time.time())
            names.append(vid)
    os.replace(tmp, path)
    return names


# ---------------------------------------------------------------------------------- folders
def write_sav_eval_folder(root: str | os.PathLike, videos: list[str], h: int = 96, w: int = 128,
                          n_frames: int = 17, n_objects: int = 2, seed: int = 0,
                          split: str = "sav_val", png_mode: str = "L",
                          scene: SceneConfig = SceneConfig(), seeds: list[int] | None = None,
                          frame_step: int = 1) -> None:
    """SA-V val / test layout: all 24 fps JPEGs, per-object PNGs every 4th frame, `<split>.txt`.
    png_mode "L" (0/255) or "P" (0/1 with a palette). seeds: each video's render seed (default
    `seed * 31 + i`; `train_video_seed` gives a training tar's videos). frame_step 4 keeps only
    the annotated frames (0, 4, 8, ...), renumbered 0, 1, 2, ...: the clip spacing of SAM 2's
    6 fps training, every frame annotated."""
    if frame_step not in (1, ANNOTATION_EVERY):
        raise ValueError(f"frame_step must be 1 or {ANNOTATION_EVERY}, got {frame_step}")
    if seeds is not None and len(seeds) != len(videos):
        raise ValueError(f"{len(seeds)} seeds for {len(videos)} videos")
    root = os.fspath(root)
    for i, vid in enumerate(videos):
        render_seed = seed * 31 + i if seeds is None else seeds[i]
        frames, masks = render_video(render_seed, h, w, n_frames, n_objects, scene=scene)
        frames, masks = frames[::frame_step], masks[::frame_step]
        annotated_every = ANNOTATION_EVERY // frame_step
        fdir = os.path.join(root, "JPEGImages_24fps", vid)
        os.makedirs(fdir, exist_ok=True)
        for t, f in enumerate(frames):
            with open(os.path.join(fdir, f"{t:05d}.jpg"), "wb") as fh:
                fh.write(jpeg.encode(f))
        for k in range(n_objects):
            odir = os.path.join(root, "Annotations_6fps", vid, f"{k:03d}")
            os.makedirs(odir, exist_ok=True)
            for t in range(0, len(frames), annotated_every):
                _binary_png(masks[t, k], png_mode).save(os.path.join(odir, f"{t:05d}.png"))
    with open(os.path.join(root, f"{split}.txt"), "w") as f:
        f.write("".join(v + "\n" for v in videos))


def _binary_png(mask: np.ndarray, mode: str) -> Image.Image:
    if mode == "L":
        return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
    return im


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map (bit-interleaved), 256 x RGB."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_davis_folder(root: str | os.PathLike, videos: list[str], h: int = 96, w: int = 128,
                       n_frames: int = 10, n_objects: int = 2, seed: int = 0,
                       resolution: str = "480p", scene: SceneConfig = SceneConfig()) -> None:
    """DAVIS-2017 layout: JPEGImages/<res>/<vid>/%05d.jpg, palette Annotations (ids 1..K,
    nearer objects win where they overlap), ImageSets/2017/train.txt."""
    root = os.fspath(root)
    for i, vid in enumerate(videos):
        frames, masks = render_video(seed * 17 + i, h, w, n_frames, n_objects, scene=scene)
        fdir = os.path.join(root, "JPEGImages", resolution, vid)
        adir = os.path.join(root, "Annotations", resolution, vid)
        os.makedirs(fdir, exist_ok=True)
        os.makedirs(adir, exist_ok=True)
        for t in range(n_frames):
            with open(os.path.join(fdir, f"{t:05d}.jpg"), "wb") as fh:
                fh.write(jpeg.encode(frames[t]))
            ids = np.zeros((h, w), np.uint8)
            for k in range(n_objects):  # visible masks do not overlap: order is irrelevant
                ids[masks[t, k]] = k + 1
            im = Image.fromarray(ids, mode="P")
            im.putpalette(davis_palette())
            im.save(os.path.join(adir, f"{t:05d}.png"))
    sets = os.path.join(root, "ImageSets", "2017")
    os.makedirs(sets, exist_ok=True)
    with open(os.path.join(sets, "train.txt"), "w") as f:
        f.write("".join(v + "\n" for v in videos))
