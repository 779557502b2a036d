"""The exported tracking step: serialised, reloaded, and run with identical results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tam_jax.configs import get_config
from tam_jax.export import (
    bank_to_dict,
    export_track_frame,
    load_exported,
    save_exported,
    track_frame_fn,
)
from tam_jax.models.tam import init_params
from tam_jax.streaming import StreamingTracker
from tam_jax.video_io import resize_frame
from tam_jax.video_predictor import VideoPredictor


def test_exported_track_step_round_trips_with_identical_results(tmp_path):
    cfg = get_config("tiny")
    params = init_params(cfg, 0)
    rng = np.random.RandomState(0)
    frames = rng.randint(0, 255, size=(4, 48, 64, 3), dtype=np.uint8)
    # a real memory: two objects prompted on frame 0, tracked on frame 1, by the tracker
    tracker = StreamingTracker(VideoPredictor(cfg, params, progress=False))
    tracker.add_frame(frames[0])
    tracker.add_new_points_or_box(1, points=[[20, 20]], labels=[1])
    tracker.add_new_points_or_box(2, box=[30, 10, 60, 40])
    tracker.add_frame(frames[1])
    bank = bank_to_dict(tracker.bank)

    path = tmp_path / "track_tiny_2obj.jaxexport"
    save_exported(export_track_frame(cfg, params, num_objects=2), path)
    exported = load_exported(path)
    small = jnp.asarray(resize_frame(frames[2], cfg.image_size))
    out, new_bank = exported.call(params, bank, small, jnp.int32(2), jnp.int32(2**31 - 1))

    # identical to the same function compiled in this process
    args = (params, bank, small, jnp.int32(2), jnp.int32(2**31 - 1))
    want_out, want_bank = jax.jit(track_frame_fn(cfg))(*args)
    for name in out:
        np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(want_out[name]))
    for name in want_bank:
        np.testing.assert_array_equal(np.asarray(new_bank[name]), np.asarray(want_bank[name]),
                                      err_msg=name)
    # and the tracker's own step (encoder compiled separately: float rounding only)
    tracker.add_frame(frames[2])
    np.testing.assert_allclose(np.asarray(out["low_res_masks"]), np.asarray(tracker._low_res),
                               atol=1e-5)

    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk: not a serialised"):
        load_exported(tmp_path / "junk")
