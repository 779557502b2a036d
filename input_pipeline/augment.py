"""SAM 2's training augmentations, in its order, for one clip (data_and_eval.md §3.2).

    1. horizontal flip, p = 0.5, one draw per clip
    2. affine: rotation U[-25, 25] deg, x-shear U[-20, 20] deg about the centre, one draw per
       clip; images bilinear with fill = the ImageNet mean colour, masks nearest with fill 0;
       skipped for the whole clip when it would empty a mask visible in the first frame
    3. square resize to `resolution`
    4. colour jitter per clip (brightness 0.1, contrast 0.03, saturation 0.03, random order)
    5. grayscale, p = 0.05 per clip
    6. colour jitter per frame (brightness 0.1, contrast 0.05, saturation 0.05)
    7. normalisation with the ImageNet mean / std (`normalize`; by default on the device, so
       batches cross to it as uint8, 4x smaller)
    and, off by default (not SAM 2's), `frame_shift`: each frame after the clip's first moved
    by its own random whole-pixel offset after step 6 (`shift_frames`)

Parameters are drawn from the `np.random.Generator` Grain gives each record, so a record's
augmentation depends only on the seed and its index. Pixels move through OpenCV (steps 1-3 in
one warp per frame and per mask: flip, affine and resize compose into one 2x3 matrix) and the
colour steps 4-6 compose into one 3x4 matrix per frame applied in one pass: brightness,
contrast, saturation and grayscale are all affine maps of the RGB vector (contrast blends with
the frame's mean grey, tracked through the earlier maps). Differences from torchvision, all
below what training notices: one interpolation instead of two (no intermediate rounding),
clamping to [0, 255] once at the end instead of after each colour op, the mean grey measured on
every 4th row and column, masks resized nearest instead of bilinear-then-threshold.

Coordinates: continuous, pixel (row i, col j) covers [j, j + 1) x [i, i + 1); OpenCV puts pixel
centres on integers, hence the half-pixel shifts in `_cv_inverse`.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FILL_RGB = (123.0, 116.0, 103.0)  # 255 x the ImageNet mean: SAM 2's affine fill colour
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2 luma (PIL "L", torchvision)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What is applied to a clip. Defaults: SAM 2's video recipe (MOSE fine-tune config = paper
    Table 13b). `image()` gives the paper's SA-1B recipe (flip + resize only).

    jitter tuples are (brightness, contrast, saturation): factor ~ U[1 - x, 1 + x]."""

    resolution: int = 1024
    hflip_p: float = 0.5
    degrees: float = 25.0
    shear: float = 20.0
    clip_jitter: tuple[float, float, float] = (0.1, 0.03, 0.03)
    grayscale_p: float = 0.05
    frame_jitter: tuple[float, float, float] = (0.1, 0.05, 0.05)
    # Not SAM 2's: each frame after a clip's first moved by its own whole-pixel offset, up to
    # this fraction of `resolution` in x and in y (fill: the mean colour, masks 0), so that
    # copying a mask in place stops working (`shift_frames`; 0 = off, SAM 2's recipe)
    frame_shift: float = 0.0

    @classmethod
    def image(cls, resolution: int = 1024) -> AugmentConfig:
        return cls(resolution=resolution, degrees=0.0, shear=0.0, clip_jitter=(0.0, 0.0, 0.0),
                   grayscale_p=0.0, frame_jitter=(0.0, 0.0, 0.0))

    @classmethod
    def none(cls, resolution: int = 1024) -> AugmentConfig:
        """Only the square resize (evaluation, tests)."""
        return dataclasses.replace(cls.image(resolution), hflip_p=0.0)

    def __post_init__(self):
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        for name in ("hflip_p", "grayscale_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if not 0.0 <= self.frame_shift < 1.0:
            raise ValueError(f"frame_shift must be in [0, 1), got {self.frame_shift}")


@dataclasses.dataclass(frozen=True)
class ClipParams:
    """One clip's draw: flip, affine angle / shear (degrees), colour (T, 3, 4) matrices are
    built per frame from `clip_ops`, `grayscale` and `frame_ops` (lists of (op, factor))."""

    flip: bool
    angle: float
    shear: float
    clip_ops: tuple[tuple[str, float], ...]
    grayscale: bool
    frame_ops: tuple[tuple[tuple[str, float], ...], ...]
    frame_shifts: tuple[tuple[int, int], ...] = ()  # per frame (dx, dy) output pixels, or ()

    @property
    def has_affine(self) -> bool:
        return self.angle != 0.0 or self.shear != 0.0

    def without_affine(self) -> ClipParams:
        return dataclasses.replace(self, angle=0.0, shear=0.0)


def _jitter_ops(rng: np.random.Generator, strengths) -> tuple[tuple[str, float], ...]:
    """torchvision ColorJitter: factors ~ U[1 - s, 1 + s], applied in a random order."""
    ops = []
    for i in rng.permutation(3):
        s = strengths[i]
        if s > 0:
            ops.append((("brightness", "contrast", "saturation")[i],
                        float(rng.uniform(1.0 - s, 1.0 + s))))
    return tuple(ops)


def sample_params(rng: np.random.Generator, cfg: AugmentConfig, num_frames: int) -> ClipParams:
    """Draw one clip's augmentation. Always draws the same number of values for a given config
    and clip length, so nothing downstream shifts the record's random stream."""
    flip = bool(rng.random() < cfg.hflip_p)
    angle = float(rng.uniform(-cfg.degrees, cfg.degrees)) if cfg.degrees else 0.0
    shear = float(rng.uniform(-cfg.shear, cfg.shear)) if cfg.shear else 0.0
    clip_ops = _jitter_ops(rng, cfg.clip_jitter)
    grayscale = bool(rng.random() < cfg.grayscale_p)
    frame_ops = tuple(_jitter_ops(rng, cfg.frame_jitter) for _ in range(num_frames))
    shifts = ()
    if cfg.frame_shift > 0:  # drawn last: without it the stream is SAM 2's recipe's
        most = int(round(cfg.frame_shift * cfg.resolution))
        d = rng.integers(-most, most, size=(num_frames, 2), endpoint=True)
        d[0] = 0
        shifts = tuple((int(x), int(y)) for x, y in d)
    return ClipParams(flip, angle, shear, clip_ops, grayscale, frame_ops, shifts)


# ------------------------------------------------------------------------------- geometry

def geometry(params: ClipParams, src_hw: tuple[int, int], out_size: int) -> np.ndarray:
    """Forward 3x3 map, continuous source coords (x, y) of an (H, W) frame -> output coords in
    the out_size square: flip, then rotation + x-shear about the centre, then resize."""
    h, w = src_hw
    m = np.eye(3)
    if params.flip:
        m = np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]]) @ m
    if params.has_affine:
        a, s = np.deg2rad(params.angle), np.deg2rad(params.shear)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        shear = np.array([[1, np.tan(s), 0], [0, 1, 0], [0, 0, 1]])
        centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
        back = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
        m = centre @ rot @ shear @ back @ m
    return np.diag([out_size / w, out_size / h, 1.0]) @ m


def _cv_inverse(forward: np.ndarray) -> np.ndarray:
    """Forward continuous map -> OpenCV's inverse 2x3 map in its integer-centre convention."""
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unhalf = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    return (unhalf @ np.linalg.inv(forward) @ half)[:2]


def _is_scale_only(forward: np.ndarray) -> bool:
    return forward[0, 1] == 0 and forward[1, 0] == 0 and forward[0, 0] > 0


def warp_image(image: np.ndarray, forward: np.ndarray, out_size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (S, S, 3) through the forward map (bilinear, fill = mean colour).
    A pure resize (no affine, no flip) uses cv2.resize; downscaling then averages (INTER_AREA)
    as torchvision's antialiased resize does."""
    if _is_scale_only(forward):
        shrink = forward[0, 0] < 1 or forward[1, 1] < 1
        return cv2.resize(image, (out_size, out_size),
                          interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.warpAffine(image, _cv_inverse(forward), (out_size, out_size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=FILL_RGB)


def warp_mask(mask: np.ndarray, forward: np.ndarray, out_size: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """uint8 0/1 (H, W) -> (S, S) (nearest, fill 0); written into `out` when given (a
    C-contiguous uint8 (S, S) view, e.g. one slot of the batch's mask array)."""
    return cv2.warpAffine(np.ascontiguousarray(mask), _cv_inverse(forward),
                          (out_size, out_size), dst=out,
                          flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def gather_indices(forward: np.ndarray, src_hw: tuple[int, int],
                   out_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """For an axis-aligned forward map (resize, flip; no rotation or shear): the source rows
    and columns (each (S,) intp) whose nearest-neighbour gather `src[rows][:, cols]` is
    `warp_mask(src, forward, S)`. None for any other map."""
    if forward[0, 1] != 0 or forward[1, 0] != 0:
        return None
    h, w = src_hw
    inv = np.linalg.inv(forward)
    centres = np.arange(out_size) + 0.5
    cols = np.clip(np.floor(inv[0, 0] * centres + inv[0, 2]), 0, w - 1).astype(np.intp)
    rows = np.clip(np.floor(inv[1, 1] * centres + inv[1, 2]), 0, h - 1).astype(np.intp)
    return rows, cols


def warp_mask_fortran(mask_fortran: np.ndarray, forward: np.ndarray, out_size: int,
                      out: np.ndarray | None = None) -> np.ndarray:
    """`warp_mask` for a Fortran-order (H, W) mask (what pycocotools decodes).

    An axis-aligned map (resize, flip: SA-1B's recipe, or a clip whose affine was dropped) is
    a nearest-neighbour gather of rows and columns, read straight from the Fortran layout
    (0.9 ms for an SA-1B mask to 1024^2, against 2.3 ms for reordering + warping). Otherwise
    the mask is put in C order with OpenCV's blocked transpose (7x faster than numpy's copy)
    and warped."""
    picks = gather_indices(forward, mask_fortran.shape, out_size)
    if picks is not None:
        rows, cols = picks
        gathered = mask_fortran.T[cols][:, rows]  # (S cols, S rows): the output transposed
        if out is None:
            return np.ascontiguousarray(gathered.T)
        out[...] = gathered.T
        return out
    return warp_mask(cv2.transpose(mask_fortran.T), forward, out_size, out)


def mask_forward(frame_forward: np.ndarray, frame_hw, mask_hw) -> np.ndarray:
    """The frame's forward map for a mask stored at another size (SA-V keeps masks at the
    video's size while frames may be stored smaller)."""
    (fh, fw), (mh, mw) = frame_hw, mask_hw
    return frame_forward @ np.diag([fw / mw, fh / mh, 1.0])


def shift_frames(images: np.ndarray, masks: np.ndarray, shifts) -> None:
    """Move frame t of images uint8 (T, S, S, 3) and masks (T, O, S, S) by shifts[t] = (dx, dy)
    whole pixels, in place; what comes in is the mean colour (images) and 0 (masks)."""
    s = images.shape[1]
    for t, (dx, dy) in enumerate(shifts):
        if dx == 0 and dy == 0:
            continue
        if abs(dx) >= s or abs(dy) >= s:
            raise ValueError(f"shift {(dx, dy)} moves frame {t} out of its {s}x{s} square")
        src = np.s_[max(0, -dy): s - max(0, dy), max(0, -dx): s - max(0, dx)]
        dst = np.s_[max(0, dy): s - max(0, -dy), max(0, dx): s - max(0, -dx)]
        img, msk = images[t].copy(), masks[t].copy()
        images[t] = np.asarray(FILL_RGB, np.uint8)
        masks[t] = 0
        images[t][dst] = img[src]
        masks[t][(slice(None),) + dst] = msk[(slice(None),) + src]


# --------------------------------------------------------------------------------- colour

def _op_matrix(op: str, factor: float, mean_rgb: np.ndarray) -> np.ndarray:
    """One colour op as a 3x4 affine map of the RGB column vector (values 0..255)."""
    eye = np.eye(3)
    if op == "brightness":  # blend with black
        return np.hstack([factor * eye, np.zeros((3, 1))])
    if op == "contrast":  # blend with the image's mean grey
        grey = float(GREY_WEIGHTS @ mean_rgb)
        return np.hstack([factor * eye, np.full((3, 1), (1 - factor) * grey)])
    if op == "saturation":  # blend with the pixel's own grey
        return np.hstack([factor * eye + (1 - factor) * np.outer(np.ones(3), GREY_WEIGHTS),
                          np.zeros((3, 1))])
    if op == "grayscale":
        return np.hstack([np.outer(np.ones(3), GREY_WEIGHTS), np.zeros((3, 1))])
    raise ValueError(op)


def colour_matrix(ops, mean_rgb: np.ndarray) -> np.ndarray | None:
    """Compose colour ops [(op, factor), ...] into one 3x4 matrix (None when there are none).
    mean_rgb: the frame's mean colour before the first op; later ops see it mapped."""
    total = np.hstack([np.eye(3), np.zeros((3, 1))])
    mean = np.asarray(mean_rgb, np.float64)
    for op, factor in ops:
        m = _op_matrix(op, factor, mean)
        total = m[:, :3] @ total + np.hstack([np.zeros((3, 3)), m[:, 3:]])
        mean = m[:, :3] @ mean + m[:, 3]
    return None if not ops else total


def frame_colour_ops(params: ClipParams, t: int) -> list[tuple[str, float]]:
    """Steps 4-6 for frame t, in order."""
    ops = list(params.clip_ops)
    if params.grayscale:
        ops.append(("grayscale", 1.0))
    return ops + list(params.frame_ops[t])


def apply_colour(image: np.ndarray, ops) -> np.ndarray:
    """uint8 (S, S, 3) -> same, the ops applied in one pass (clamped, rounded)."""
    if not ops:
        return image
    mean = image[::4, ::4].reshape(-1, 3).mean(0)
    return cv2.transform(image, colour_matrix(ops, mean).astype(np.float32))


def normalize(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB -> float32 (x / 255 - mean) / std (the host-side option)."""
    return (images_uint8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
