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


def test_per_frame_scores_by_object_average_each_object_id_over_videos(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for video, x in (("v1", 10), ("v2", 20)):
        # object 000 exact in both videos; object 001 exact in v1, missed in v2
        _write(gt, video, "000", 0, _square(x, 10))
        _write(pred, video, "000", 0, _square(x, 10))
        _write(gt, video, "001", 0, _square(10, x))
        _write(pred, video, "001", 0, _square(10, x) if video == "v1" else _square(0, 0, 1))
    scores = probe_demo_eval.per_frame_scores(pred, gt, by_object=True)
    assert sorted(scores) == ["000", "001"]
    assert scores["000"][0] == {"J": 1.0, "F": 1.0, "objects": 2}
    assert scores["001"][0]["objects"] == 2
    np.testing.assert_allclose(scores["001"][0]["J"], 0.5)  # (1 + 0) / 2
    flat = probe_demo_eval.per_frame_scores(pred, gt)
    np.testing.assert_allclose(flat[0]["J"], 0.75)  # the same four masks, not grouped


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


def test_training_videos_are_the_scenes_the_training_tars_hold(tmp_path):
    from input_pipeline import rle, sav, synthetic

    scene = synthetic.SceneConfig((0.18, 0.3), (0.3, 1.0), 1)
    # two tars of 2 videos, as make_synthetic_data.py --kinds sav --shards 2 --per_shard 2
    # --seed 5 writes them
    for shard in range(2):
        synthetic.write_sav_tar(tmp_path / f"sav_{shard:03d}.tar", [1 + shard * 2, 2 + shard * 2],
                                32, 32, 9, 2, seed=5 + shard, scene=scene, auto=False)
    out = tmp_path / "tv"
    args = ["training-videos", "--out", str(out), "--num_videos", "3", "--seed", "5",
            "--per_shard", "2", "--frames", "9", "--size", "32", "--objects", "2"]
    assert probe_demo_eval.main(args) == 0
    assert (out / "sav_val.txt").read_text().split() == ["sav_000001", "sav_000002", "sav_000003"]
    videos = {v.video_id: v for shard in range(2)
              for v in sav.read_tar(tmp_path / f"sav_{shard:03d}.tar")}
    for vid in ("sav_000001", "sav_000003"):  # a video of each tar
        for t, frame_rles in enumerate(videos[vid].manual.rles):  # annotated frames 0, 4, 8
            for k, r in enumerate(frame_rles):
                png = np.asarray(Image.open(out / "Annotations_6fps" / vid / f"{k:03d}"
                                            / f"{4 * t:05d}.png")) > 0
                np.testing.assert_array_equal(png, rle.decode(r))
    assert len(list((out / "JPEGImages_24fps" / "sav_000001").iterdir())) == 9

    # 6 fps: the annotated frames only, renumbered, each annotated
    out6 = tmp_path / "tv6"
    assert probe_demo_eval.main([*args[:2], str(out6), *args[3:], "--frame_step", "4"]) == 0
    assert sorted(p.name for p in (out6 / "JPEGImages_24fps" / "sav_000003").iterdir()) == [
        "00000.jpg", "00001.jpg", "00002.jpg"]
    for t in range(3):
        png = np.asarray(Image.open(out6 / "Annotations_6fps" / "sav_000003" / "001"
                                    / f"{t:05d}.png")) > 0
        np.testing.assert_array_equal(png, rle.decode(videos["sav_000003"].manual.rles[t][1]))
    with pytest.raises(ValueError, match="frame_step"):
        synthetic.write_sav_eval_folder(tmp_path / "bad", ["v"], 32, 32, 9, 1, frame_step=2)
    with pytest.raises(ValueError, match="2 seeds for 1 videos"):
        synthetic.write_sav_eval_folder(tmp_path / "bad", ["v"], 32, 32, 9, 1, seeds=[1, 2])
