"""`jax.export` of the per-frame tracking step, for serving without tam_jax's Python code.

The exported function is one unprompted video frame for a fixed variant, input size and
object count (the compiled body of `VideoPredictor.propagate_in_video` / `StreamingTracker`):

    track_frame(params, bank, frame, frame_idx, num_frames)
        params      the model parameters (an argument, not baked in: one file serves any
                    checkpoint of the variant)
        bank        the memory bank as a dict of arrays (`bank_to_dict`), B objects
        frame       (S, S, 3) uint8, already resized to the model input
        frame_idx, num_frames   int32 scalars (num_frames only caps the pointer window)
    -> dict(low_res_masks (B, 1, 4h, 4w), obj_ptr (B, 256), object_score_logits (B, 1)),
       new bank dict

Prompted frames (clicks, boxes, masks) stay with the Python predictors; a served tracker
takes its initial bank from them (`StreamingTracker.bank`). See docs/export.md.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import jax
import jax.numpy as jnp
from jax import export as jax_export

from tam_jax.configs import EfficientTAMConfig
from tam_jax.memory import MemoryBank, empty_bank
from tam_jax.models.tam import EfficientTAM
from tam_jax.predictors import IMAGENET_MEAN, IMAGENET_STD
from tam_jax.track import track_step


def bank_to_dict(bank: MemoryBank) -> dict:
    return {f.name: getattr(bank, f.name) for f in dataclasses.fields(bank)}


def bank_from_dict(d: dict) -> MemoryBank:
    return MemoryBank(**d)


def track_frame_fn(cfg: EfficientTAMConfig):
    """The pure function that gets exported (also usable directly under `jax.jit`)."""

    def track_frame(params, bank_dict, frame_uint8, frame_idx, num_frames):
        x = (frame_uint8.astype(jnp.float32)[None] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        feats, pos = EfficientTAM(cfg).apply({"params": params}, x,
                                             method=EfficientTAM.encode_image)
        bank = bank_from_dict(bank_dict)
        b = bank.num_objects
        rep = lambda a: jnp.broadcast_to(a, (b, *a.shape[1:]))
        out, bank = track_step(cfg, params, bank, rep(feats), rep(pos), frame_idx, num_frames,
                               store="recent")
        keep = ("low_res_masks", "obj_ptr", "object_score_logits")
        return {k: out[k] for k in keep}, bank_to_dict(bank)

    return track_frame


def export_track_frame(cfg: EfficientTAMConfig, params, num_objects: int,
                       cond_capacity: int = 1, platforms=None) -> jax_export.Exported:
    """Trace, lower and export `track_frame` for `num_objects` objects.

    platforms: e.g. ("cpu", "cuda", "tpu") for a multi-platform artifact; default the
    current backend.
    """
    bank = bank_to_dict(empty_bank(cfg, num_objects, cond_capacity))
    s = cfg.image_size
    spec = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    args = (spec(params), spec(bank), jax.ShapeDtypeStruct((s, s, 3), jnp.uint8),
            jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
    return jax_export.export(jax.jit(track_frame_fn(cfg)), platforms=platforms)(*args)


def save_exported(exported: jax_export.Exported, path: str | os.PathLike) -> None:
    """Serialise to `path` atomically (a crash never leaves a truncated file)."""
    path = os.fspath(path)
    data = exported.serialize()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_exported(path: str | os.PathLike) -> jax_export.Exported:
    """Deserialise a file written by `save_exported`; call it with `.call(...)`."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return jax_export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffer errors are not user friendly
        raise ValueError(f"{path}: not a serialised jax.export artifact ({e})") from e
