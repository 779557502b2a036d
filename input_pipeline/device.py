"""Host batches -> global `jax.Array`s, and the last input steps done on the accelerator.

Each host's pipeline yields its own slice of the global batch (numpy, leading axis = the
host's batch size); `to_global` assembles the slices of all hosts into arrays sharded along the
batch axis of a mesh, so the global batch is per-host batch x process_count:

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    batch = to_global(next(it), mesh)              # every leaf: jax.Array, P("data")
    images = model_images(batch["images"])        # (B, T, S, S, 3) normalised, on device
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def batch_sharding(mesh: Mesh, batch_axes: str | tuple[str, ...] = "data") -> NamedSharding:
    """Leading (batch) axis split over `batch_axes` of the mesh, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes))


def to_global(host_batch: dict, mesh: Mesh, batch_axes: str | tuple[str, ...] = "data") -> dict:
    """{name: numpy (b, ...)} of this host -> {name: jax.Array (b * process_count, ...)}.

    The host's b must be divisible by its number of devices along batch_axes (each device
    gets whole examples). Non-array leaves are refused: batches carry numbers only.
    """
    sharding = batch_sharding(mesh, batch_axes)

    def one(path, x):
        if not isinstance(x, np.ndarray | np.generic):
            raise TypeError(f"batch field {jax.tree_util.keystr(path)} is {type(x).__name__}, "
                            "not a numpy array")
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"batch field {jax.tree_util.keystr(path)} has no batch axis")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(one, host_batch)


def model_images(images_uint8: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 (..., S, S, 3) RGB -> the model's normalised input ((x / 255 - mean) / std).
    Images normalised on the host (normalize="host") are already float: returned as given."""
    if images_uint8.dtype != jnp.uint8:
        return images_uint8.astype(dtype)
    x = images_uint8.astype(jnp.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)


def unpack_masks(packed: jax.Array, width: int) -> jax.Array:
    """uint8 (..., W // 8) from the pipeline's pack_masks (np.packbits, big-endian bits) ->
    bool (..., W)."""
    bits = (packed[..., None] >> jnp.arange(7, -1, -1, dtype=jnp.uint8)) & 1
    return bits.reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., :width].astype(bool)
