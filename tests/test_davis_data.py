"""DAVIS-style folders -> TFDS (input_pipeline/tfds_builders/davis.py) through the preparation
CLI: records round-trip the JPEGs and palette PNGs, corrupt frames and videos are skipped and
reported, the frame stride, the held-out split, the flat layout, the single-process builder,
and Grain training batches from `SourceSpec("davis", ...)`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import folders, rle, sampling, synthetic
from input_pipeline.pipeline import PipelineConfig, SourceSpec, build
from input_pipeline.prepare import prepare
from input_pipeline.tfds_builders import davis as davis_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ["bear", "car01", "dog"]
H, W, T = 32, 48, 8


def _prepare_cli(argv) -> int:
    spec = importlib.util.spec_from_file_location(
        "prepare_data", os.path.join(ROOT, "scripts", "prepare_data.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(argv)


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """GOOD videos (8 frames, 2 objects) + "broken" (frame 3 a truncated JPEG, frame 5 without
    annotation, frame 6 annotated at the wrong size) + "nolabels" (no annotation folder),
    prepared by the CLI with 2 videos per shard."""
    root = tmp_path_factory.mktemp("davis")
    raw = root / "raw"
    synthetic.write_davis_folder(raw, GOOD + ["broken", "nolabels"], h=H, w=W, n_frames=T,
                                 n_objects=2, seed=3)
    frames, anns = raw / "JPEGImages" / "480p", raw / "Annotations" / "480p"
    jpg = frames / "broken" / "00003.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    (anns / "broken" / "00005.png").unlink()
    Image.new("P", (W // 2, H)).save(anns / "broken" / "00006.png")
    shutil.rmtree(anns / "nolabels")
    data = root / "data"
    assert _prepare_cli(["davis", "--manual_dir", str(raw), "--data_dir", str(data),
                         "--num_workers", "0", "--videos_per_shard", "2",
                         "--no_progress"]) == 0
    return raw, data


def _records(data_dir, split="train") -> dict[str, dict]:
    ds = tfds.data_source(davis_builder.TFDS_NAME, split=split, data_dir=str(data_dir))
    return {ex["video_id"].decode(): ex for ex in (ds[i] for i in range(len(ds)))}


def test_records_roundtrip_the_jpegs_and_palette_pngs(davis):
    raw, data = davis
    records = _records(data)
    assert sorted(records) == sorted(GOOD + ["broken"])
    assert list(records["bear"]["frame_idx"]) == list(range(T))
    assert list(records["broken"]["frame_idx"]) == [0, 1, 2, 4, 7]
    frames_root, ann_root = folders.davis_dirs(raw)
    for vid, ex in records.items():
        video = folders.read_davis_video(frames_root, ann_root, vid)
        n_obj, hw = int(ex["num_objects"]), (int(ex["orig_height"]), int(ex["orig_width"]))
        assert hw == (H, W) and (ex["height"], ex["width"]) == (H, W)
        assert set(ex["obj_ids"]) <= {1, 2} and len(ex["masklet_rles"]) == len(ex["frames"]) * n_obj
        seen = {}
        for p, t in enumerate(ex["frame_idx"]):
            with open(video.frames[t], "rb") as f:
                assert ex["frames"][p] == f.read()  # the original JPEG, not re-encoded
            ids = folders.load_palette_png(video.masks[0][t])
            for k, obj in enumerate(ex["obj_ids"]):
                counts = ex["masklet_rles"][p * n_obj + k]
                mask = rle.decode({"size": list(hw), "counts": counts}).astype(bool)
                np.testing.assert_array_equal(mask, ids == obj, err_msg=f"{vid} {t} {obj}")
                if mask.any():
                    seen.setdefault(k, p)
        assert list(ex["first_frame"]) == [seen[k] for k in range(n_obj)]


def test_corrupt_frames_and_videos_are_skipped_and_reported(davis):
    _, data = davis
    report = json.load(open(data / "davis" / "1.0.0" / "prepare_report.json"))
    assert report["skipped_by_kind"] == {"bad_jpeg": 1, "missing_annotation": 2,
                                         "size_mismatch": 1}
    listed = {(s["record"], s["kind"]) for s in report["skipped"]}
    assert listed == {("broken/00003.jpg", "bad_jpeg"),
                      ("broken/00005.jpg", "missing_annotation"),
                      ("broken/00006.jpg", "size_mismatch"),
                      ("nolabels", "missing_annotation")}
    assert report["examples"] == 4 and report["shards"] == 3  # 5 videos, 2 per shard


def test_stride_heldout_split_flat_layout_and_the_tfds_builder(davis, tmp_path):
    raw, _ = davis
    flat = tmp_path / "flat"  # JPEGImages/<vid>, Annotations/<vid>
    for sub in ("JPEGImages", "Annotations"):
        for vid in ("bear", "dog"):
            shutil.copytree(raw / sub / "480p" / vid, flat / sub / vid)
    (tmp_path / "val.txt").write_text("dog\n")
    cfg = davis_builder.DavisConfig(frame_stride=4, heldout_list=str(tmp_path / "val.txt"))
    report = prepare("davis", flat, tmp_path / "data", cfg, num_workers=0, progress=False)
    assert report["split_examples"] == {"train": 1, "val": 1}
    got = {s: _records(tmp_path / "data", s) for s in ("train", "val")}
    assert list(got["train"]) == ["bear"] and list(got["val"]) == ["dog"]
    assert list(got["val"]["dog"]["frame_idx"]) == [0, 4]

    builder = davis_builder.Davis(data_dir=str(tmp_path / "builder"), config=cfg,
                                  file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(flat)))
    for split, records in got.items():
        (want,) = [builder.as_data_source(split=split)[0]]
        (ex,) = records.values()
        assert ex.keys() == want.keys()
        for k in ex:
            np.testing.assert_array_equal(np.asarray(ex[k]), np.asarray(want[k]), err_msg=k)


def test_clip_sampler_and_pipeline_batches(davis, tmp_path):
    _, data = davis
    clip = sampling.ClipConfig(num_frames=2, max_objects=2)
    record = _records(data)["bear"]
    choice = sampling.sample_clip(record, np.random.default_rng(0), clip)
    assert abs(choice.positions[1] - choice.positions[0]) == 1 and choice.objects
    cfg = PipelineConfig(resolution=32, clip=clip)
    batch = next(iter(build([SourceSpec("davis", str(data), batch_size=2)], cfg, 0, 1)))
    assert batch["images"].shape == (2, 2, 32, 32, 3) and batch["images"].dtype == np.uint8
    assert batch["masks"].shape == (2, 2, 2, 32, 32) and batch["masks"].dtype == bool
    assert batch["obj_valid"].shape == (2, 2) and batch["obj_valid"][:, 0].all()
    assert set(batch["obj_ids"][batch["obj_valid"]]) <= {1, 2}
    assert batch["frame_idx"].shape == (2, 2) and batch["orig_hw"].tolist() == [[H, W]] * 2
    with pytest.raises(FileNotFoundError, match="prepare_data.py davis"):  # never a download
        build([SourceSpec("davis", str(tmp_path), batch_size=1)], cfg, 0, 1)
