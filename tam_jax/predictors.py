"""Predictors: the image predictor with the official `SAM2ImagePredictor` semantics.

- `set_image(image)`: HWC RGB uint8 (numpy or PIL) -> square resize to image_size (bilinear,
  antialiased), ImageNet normalisation, image encoder, + `no_mem_embed` (spec §4.2, §10).
- `predict(...)`: coordinates in original-image pixels (x, y); a box (x0, y0, x1, y1) becomes
  two points labelled 2 / 3 placed before the clicks; masks come back at the original size with
  IoU scores and the (4h x 4w) low-res logits, clamped to [-32, 32] like the official.

Each distinct (image size, prompt shape) compiles once; later calls reuse the compiled code.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tam_jax.configs import EfficientTAMConfig, get_config, override
from tam_jax.models.tam import EfficientTAM, init_params, resize_bilinear

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def with_conv_impl(cfg: EfficientTAMConfig, conv_impl: str | None = None) -> EfficientTAMConfig:
    """The config a predictor compiles: `conv_impl` given, it is used; None ("auto") keeps the
    config's choice except that the default "xla" becomes "matmul" on a CPU backend.

    Why: XLA:CPU runs the memory encoder's convolutions with few channels (the mask
    downsampler's strided 3x3 convolutions on the full-resolution mask: 1 -> 4 -> 16 channels)
    far below its matmul rate; as strided slices + one matmul (`conv_impl="matmul"`, equal to
    float rounding: tests/test_conv_impl.py) the memory encoder of a 512 model takes 43 ms
    instead of 127 per object and frame (docs/benchmarks.md). TPUs and GPUs keep XLA's
    convolutions."""
    if conv_impl is None:
        if cfg.conv_impl != "xla" or jax.default_backend() != "cpu":
            return cfg
        conv_impl = "matmul"
    return dataclasses.replace(cfg, conv_impl=conv_impl)


def preprocess_image(image_hwc_uint8: jax.Array, image_size: int) -> jax.Array:
    """(H, W, 3) uint8 -> (1, S, S, 3) float32 normalised model input (official transforms)."""
    x = image_hwc_uint8.astype(jnp.float32)[None] / 255.0
    x = resize_bilinear(x, image_size, image_size, antialias=True)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


class ImagePredictor:
    """Segment an image from clicks, a box and/or a previous mask (SAM-style interaction)."""

    def __init__(self, cfg: EfficientTAMConfig, params: Any, mask_threshold: float = 0.0):
        self.cfg = cfg
        self.model = EfficientTAM(cfg)
        self.params = jax.device_put(params)
        self.mask_threshold = mask_threshold
        self._features = None
        self._orig_hw: tuple[int, int] | None = None

    # -- compiled pieces ------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=0)
    def _embed(self, params, image_hwc_uint8):
        x = preprocess_image(image_hwc_uint8, self.cfg.image_size)
        feats, _ = self.model.apply({"params": params}, x, method=EfficientTAM.encode_image)
        return feats + params["no_mem_embed"].astype(feats.dtype)

    @functools.partial(jax.jit, static_argnums=(0, 6, 7))
    def _decode(self, params, features, coords, labels, mask_input, multimask_output, orig_hw):
        b = 1 if coords is None else coords.shape[0]
        feats = jnp.broadcast_to(features, (b, *features.shape[1:]))
        out = self.model.apply(
            {"params": params}, feats, coords, labels, mask_input, multimask_output,
            pad_points=True, method=EfficientTAM.prompt_and_decode,
        )
        low_res = out["masks"].astype(jnp.float32)  # (B, M, 4h, 4w)
        masks = jnp.transpose(low_res, (0, 2, 3, 1))
        masks = resize_bilinear(masks, orig_hw[0], orig_hw[1])  # (B, H, W, M)
        return jnp.transpose(masks, (0, 3, 1, 2)), out["iou_pred"], jnp.clip(low_res, -32, 32)

    # -- public API -----------------------------------------------------------------------
    def set_image(self, image) -> None:
        """Compute and cache the embedding of `image` (HWC RGB uint8 numpy array or PIL)."""
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"set_image expects an HxWx3 RGB image, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"set_image expects uint8 pixels (0..255), got {arr.dtype}")
        if min(arr.shape[:2]) < 1:
            raise ValueError(f"set_image got an empty image of shape {arr.shape}")
        self._orig_hw = (int(arr.shape[0]), int(arr.shape[1]))
        self._features = self._embed(self.params, jnp.asarray(arr))

    def get_image_embedding(self) -> np.ndarray:
        """(1, h, w, 256) features of the current image (with `no_mem_embed` added)."""
        self._require_image()
        return np.asarray(self._features)

    def reset_image(self) -> None:
        self._features, self._orig_hw = None, None

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts on the current image.

        point_coords (N, 2) or (B, N, 2) (x, y), point_labels (N,) or (B, N) (1 fg, 0 bg);
        box (4,) or (B, 4) as x0, y0, x1, y1; mask_input (1, 4h, 4w) or (B, 1, 4h, 4w) low-res
        logits from a previous call. Coordinates are original-image pixels (or [0, 1] if
        normalize_coords=False). Returns masks (M, H, W) (bool, or logits with return_logits),
        IoU scores (M,), low-res logits (M, 4h, 4w); with B > 1 prompts each gets a leading
        B axis. M = 3 with multimask_output, else 1.
        """
        self._require_image()
        h, w = self._orig_hw
        s = self.cfg.image_size
        coords, labels = self._points(point_coords, point_labels, box, normalize_coords, h, w, s)
        mask = None
        if mask_input is not None:
            mask = np.asarray(mask_input, np.float32)
            if mask.ndim == 3:
                mask = mask[None]
            lr = self.cfg.low_res_mask_size
            if mask.ndim != 4 or mask.shape[1:] != (1, lr, lr):
                raise ValueError(f"mask_input must be (1, {lr}, {lr}) or (B, 1, {lr}, {lr}) "
                                 f"low-res logits, got {np.shape(mask_input)}")
            mask = jnp.asarray(mask.transpose(0, 2, 3, 1))
        if coords is None and mask is None:
            raise ValueError("predict needs at least one prompt: points, a box or a mask_input")
        masks, ious, low_res = self._decode(self.params, self._features, coords, labels, mask,
                                            bool(multimask_output), (h, w))
        masks, ious, low_res = (np.asarray(a) for a in (masks, ious, low_res))
        if not return_logits:
            masks = masks > self.mask_threshold
        if masks.shape[0] == 1:
            masks, ious, low_res = masks[0], ious[0], low_res[0]
        return masks, ious, low_res

    def _points(self, point_coords, point_labels, box, normalize, h, w, s):
        coords = labels = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            coords = np.asarray(point_coords, np.float32)
            labels = np.asarray(point_labels, np.int32)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError(f"point_coords {np.shape(point_coords)} / point_labels "
                                 f"{np.shape(point_labels)}: expected (N, 2) / (N,)")
            coords = self._scale(coords, normalize, h, w, s)
        if box is not None:
            b = np.asarray(box, np.float32).reshape(-1, 2, 2)
            b = self._scale(b, normalize, h, w, s)
            b_labels = np.broadcast_to(np.array([[2, 3]], np.int32), (b.shape[0], 2))
            if coords is None:
                coords, labels = b, b_labels
            else:
                coords = np.concatenate([b, coords], axis=1)
                labels = np.concatenate([b_labels, labels], axis=1)
        if coords is None:
            return None, None
        return jnp.asarray(coords), jnp.asarray(labels)

    @staticmethod
    def _scale(xy, normalize, h, w, s):
        xy = xy.copy()
        if normalize:
            xy[..., 0] /= w
            xy[..., 1] /= h
        return xy * s

    def _require_image(self):
        if self._features is None:
            raise RuntimeError("call set_image(image) before predict()")


def load_weights(variant: str, checkpoint: str | os.PathLike | None = None, seed: int = 0):
    """(cfg, params): random (seeded) when `checkpoint` is None, else an official `.pt` file or
    a tam_jax model directory. The checkpoint's width must match `variant`."""
    from tam_jax import checkpointing, storage
    from tam_jax.convert.checkpoint import ConversionError, load_official_checkpoint

    cfg = get_config(variant)
    if checkpoint is None:
        return cfg, init_params(cfg, seed)
    if checkpointing.is_model_dir(checkpoint):
        params, saved = checkpointing.load_model(checkpoint)
        if get_config(saved).vit != cfg.vit or get_config(saved).hidden_dim != cfg.hidden_dim:
            raise ConversionError(f"{checkpoint}: holds {saved} weights, not {variant}")
        return cfg, params
    storage.require_local(checkpoint, "an official .pt checkpoint")  # (a gs:// model dir works)
    params, cfg = load_official_checkpoint(checkpoint, variant)
    return cfg, params


def build_image_predictor(variant: str, checkpoint: str | os.PathLike | None = None,
                          **config_overrides) -> ImagePredictor:
    """An `ImagePredictor` for a released (or test) variant.

    checkpoint: None (random weights), an official `.pt`, or a directory from
    `scripts/convert.py to-jax` / the trainer. `config_overrides` are top-level config fields,
    e.g. compute_dtype="bfloat16".
    """
    cfg, params = load_weights(variant, checkpoint)
    if config_overrides:
        cfg = override(cfg, config_overrides).validate()
    return ImagePredictor(cfg, params)
