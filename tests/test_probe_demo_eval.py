"""scripts/probe_demo_eval.py: per-frame J / F of SA-V-layout folders, and the memory cut."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scripts import probe_demo_eval
from tam_jax.evaluation import io
from tam_jax.evaluation.metrics import boundary_f


def _square(x0, y0, size=10, hw=(40, 40)):
    m = np.zeros(hw, bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def _write(root, video, obj, frame, mask):
    d = root / video / obj
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(d / f"{frame:05d}.png")


def test_per_frame_scores_average_objects_per_frame_index(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    # object a: exact on frame 0; on frame 4 shifted 5 px right: J = 50 / 150
    _write(gt, "v", "000", 0, _square(10, 10))
    _write(pred, "v", "000", 0, _square(10, 10))
    _write(gt, "v", "000", 4, _square(10, 10))
    _write(pred, "v", "000", 4, _square(15, 10))
    # object b: on frame 0 missed entirely (J 0, F 0); on frame 4 absent and predicted absent
    _write(gt, "v", "001", 0, _square(20, 20))
    _write(pred, "v", "001", 0, np.zeros((40, 40), bool))
    _write(gt, "v", "001", 4, np.zeros((40, 40), bool))
    _write(pred, "v", "001", 4, np.zeros((40, 40), bool))
    scores = probe_demo_eval.per_frame_scores(pred, gt)
    assert list(scores) == [0, 4]
    assert scores[0]["objects"] == scores[4]["objects"] == 2
    np.testing.assert_allclose(scores[0]["J"], (1.0 + 0.0) / 2)
    np.testing.assert_allclose(scores[4]["J"], (50 / 150 + 1.0) / 2)
    np.testing.assert_allclose(scores[0]["F"], (1.0 + 0.0) / 2)
    shifted_f = boundary_f(_square(15, 10), _square(10, 10))
    assert 0 < shifted_f < 1
    np.testing.assert_allclose(scores[4]["F"], (shifted_f + 1.0) / 2)


def test_per_frame_scores_name_a_missing_prediction(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt, "v", "000", 0, _square(10, 10))
    _write(gt, "v", "000", 4, _square(10, 10))
    _write(pred, "v", "000", 0, _square(10, 10))
    with pytest.raises(io.MissingPredictionError, match="00004.png"):
        probe_demo_eval.per_frame_scores(pred, gt)


def test_cut_temporal_table_keeps_the_rows_each_frame_reads():
    table = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1) * np.ones((1, 1, 1, 3))
    cut = probe_demo_eval.cut_temporal_table(table, 3)
    # recent frames at distance 1, 2 read rows 0, 1; the conditioning frame the last row
    np.testing.assert_array_equal(cut[:, 0, 0, 0], [0, 1, 6])
    np.testing.assert_array_equal(probe_demo_eval.cut_temporal_table(table, 7), table)
    np.testing.assert_array_equal(probe_demo_eval.cut_temporal_table(table, 1)[:, 0, 0, 0], [6])
    for bad in (0, 8):
        with pytest.raises(ValueError, match="num_maskmem"):
            probe_demo_eval.cut_temporal_table(table, bad)


def test_cut_params_copies_and_cuts_every_table():
    table = np.arange(7.0).reshape(7, 1, 1, 1)
    params = {"maskmem_tpos_enc": table, "inner": {"maskmem_tpos_enc": table, "w": np.ones(2)}}
    cut = probe_demo_eval._cut_params(params, 2)
    assert cut["maskmem_tpos_enc"].shape == cut["inner"]["maskmem_tpos_enc"].shape == (2, 1, 1, 1)
    assert cut["inner"]["w"] is params["inner"]["w"]
    assert params["maskmem_tpos_enc"].shape == (7, 1, 1, 1)  # the input is left as it was
