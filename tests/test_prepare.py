"""Preparation of SA-1B / SA-V into TFDS array_record datasets: corrupt inputs are skipped,
counted and listed; a killed preparation resumes to the same output; the parallel path writes
what the single-process TFDS builder writes."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import jpeg, rle, synthetic
from input_pipeline.prepare import prepare
from input_pipeline.tfds_builders import sa1b as sa1b_builder
from input_pipeline.tfds_builders import sav as sav_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _add(tar, name, data):
    synthetic._add(tar, name, data, 0)


def _corrupt_sa1b_shard(path):
    """4 images: good, truncated JPEG, JSON missing keys, one annotation with a wrong RLE."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for image_id in (901, 902, 903, 904):
            image, masks = synthetic.sa1b_image(image_id, 30, 40, n_masks=2)
            data = jpeg.encode(image)
            doc = synthetic.sa1b_json(image_id, masks, rng)
            if image_id == 902:
                data = data[: len(data) // 2]
            if image_id == 903:
                del doc["image"]["height"]
            if image_id == 904:
                doc["annotations"][0]["segmentation"] = rle.encode(np.ones((40, 30)))
            _add(tar, f"sa_{image_id}.jpg", data)
            _add(tar, f"sa_{image_id}.json", json.dumps(doc).encode())


def _corrupt_sav_shard(path):
    """3 videos: broken mp4, all masklets empty, good."""
    with tarfile.open(path, "w") as tar:
        for num in (1, 2, 3):
            frames, masks = synthetic.sav_video(num, 32, 48, 13, n_objects=2)
            mp4 = synthetic.encode_mp4(frames)
            if num == 1:
                mp4 = mp4[: len(mp4) // 3]
            if num == 2:
                masks = np.zeros_like(masks)
            doc = synthetic.sav_json(f"sav_{num:06d}", masks, 13)
            _add(tar, f"sav_train/sav_009/sav_{num:06d}.mp4", mp4)
            _add(tar, f"sav_train/sav_009/sav_{num:06d}_manual.json", json.dumps(doc).encode())


def test_corrupt_inputs_are_skipped_counted_and_listed(tmp_path):
    manual = tmp_path / "sa1b_tars"
    manual.mkdir()
    synthetic.write_sa1b_tar(manual / "sa_000000.tar", 1, 3, 40, 50)
    _corrupt_sa1b_shard(manual / "sa_000001.tar")
    good = (manual / "sa_000002.tar")
    synthetic.write_sa1b_tar(good, 10, 3, 40, 50)
    (manual / "sa_000003.tar").write_bytes(good.read_bytes()[:5000])  # truncated tar
    report = prepare("sa1b", manual, tmp_path / "data", num_workers=0, progress=False)
    kinds = report["skipped_by_kind"]
    assert kinds["bad_jpeg"] == 1 and kinds["missing_keys"] == 1
    assert kinds["rle_size_mismatch"] == 1 and kinds["truncated_tar"] == 1
    listed = {(os.path.basename(s["source"]), s["record"]) for s in report["skipped"]}
    assert ("sa_000001.tar", "sa_902.jpg") in listed
    assert ("sa_000001.tar", "sa_904.json#annotation0") in listed
    ds = tfds.data_source("sa1b", split="train", data_dir=str(tmp_path / "data"))
    ids = sorted(int(ds[i]["image_id"]) for i in range(len(ds)))
    assert 901 in ids and 904 in ids and 902 not in ids and 903 not in ids
    assert len(ds) == report["examples"]
    for i in range(len(ds)):  # nothing bad in the output
        ex = ds[i]
        assert jpeg.decode(ex["image"]).shape == (ex["height"], ex["width"], 3)
        for counts in ex["mask_rles"]:
            rle.check({"size": [ex["height"], ex["width"]], "counts": counts})
    on_disk = json.load(open(tmp_path / "data" / "sa1b" / "1.0.0" / "prepare_report.json"))
    assert on_disk["skipped_by_kind"] == kinds

    manual_v = tmp_path / "sav_tars"
    manual_v.mkdir()
    _corrupt_sav_shard(manual_v / "sav_009.tar")
    report = prepare("sav", manual_v, tmp_path / "data", num_workers=0, progress=False)
    assert report["skipped_by_kind"] == {"bad_mp4": 1, "empty_masklets": 1}  # the whole video
    ds = tfds.data_source("sav", split="train", data_dir=str(tmp_path / "data"))
    assert len(ds) == 1 and ds[0]["video_id"] == b"sav_000003"


def _records(path):
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(str(path))
    try:
        return reader.read_all()
    finally:
        reader.close()


def _prepare_cmd(manual, data, extra=""):
    return (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "from input_pipeline import prepare as P\n" + extra +
            f"P.prepare('sa1b', {str(manual)!r}, {str(data)!r}, num_workers=0, progress=False)\n")


def test_killed_preparation_resumes_to_the_same_output(tmp_path):
    manual = tmp_path / "tars"
    manual.mkdir()
    for i in range(3):
        synthetic.write_sa1b_tar(manual / f"sa_{i:06d}.tar", 100 * i, 4, 40, 50, seed=i)
    # SIGKILL in the middle of the second shard (two of its examples written)
    killer = ("import os, signal\n"
              "from input_pipeline.tfds_builders import sa1b as B\n"
              "orig, calls = B.examples_from_tar, []\n"
              "def dying(path, cfg):\n"
              "    calls.append(path)\n"
              "    for n, item in enumerate(orig(path, cfg)):\n"
              "        if len(calls) == 2 and n == 2:\n"
              "            os.kill(os.getpid(), signal.SIGKILL)\n"
              "        yield item\n"
              "B.examples_from_tar = dying\n")
    killed = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", _prepare_cmd(manual, killed, killer)],
                         capture_output=True, text=True)
    assert run.returncode == -9, run.stderr[-2000:]
    work = killed / "sa1b" / "1.0.0.work"
    assert not (killed / "sa1b" / "1.0.0").exists()  # nothing half-built is visible
    assert sorted(os.listdir(work))[:2] == ["sa_000000.array_record", "sa_000000.report.json"]
    assert glob.glob(str(work / "sa_000001.array_record.tmp-*"))  # the half-written shard
    first_report = (work / "sa_000000.report.json").stat().st_mtime_ns
    # resume: the finished shard is reused, the rest redone
    prepare("sa1b", manual, killed, num_workers=0, progress=False, keep_work=True)
    assert (work / "sa_000000.report.json").stat().st_mtime_ns == first_report
    assert not glob.glob(str(work / "*.tmp-*"))
    whole = tmp_path / "whole"
    prepare("sa1b", manual, whole, num_workers=2, progress=False)
    a, b = killed / "sa1b" / "1.0.0", whole / "sa1b" / "1.0.0"
    shards = sorted(p.name for p in a.glob("sa1b-train.array_record-*"))
    assert shards == sorted(p.name for p in b.glob("sa1b-train.array_record-*")) and shards
    for name in shards:  # the same records (the container's bytes carry writer metadata)
        assert _records(a / name) == _records(b / name)
    info = lambda d: json.load(open(d / "dataset_info.json"))["splits"]
    assert info(a) == info(b)


def test_parallel_preparation_equals_the_tfds_builder(tmp_path):
    manual = tmp_path / "tars"
    manual.mkdir()
    synthetic.write_sav_tar(manual / "sav_000.tar", [1, 2], 32, 48, 17, 2, seed=1)
    synthetic.write_sav_tar(manual / "sav_001.tar", [3], 32, 48, 17, 2, seed=2)
    prepare("sav", manual, tmp_path / "parallel", num_workers=2, progress=False)
    builder = sav_builder.Sav(data_dir=str(tmp_path / "builder"), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    got = tfds.data_source("sav", split="train", data_dir=str(tmp_path / "parallel"))
    want = builder.as_data_source(split="train")
    key = lambda ex: ex["video_id"]
    got_ex = sorted((got[i] for i in range(len(got))), key=key)
    want_ex = sorted((want[i] for i in range(len(want))), key=key)
    assert [e["video_id"] for e in got_ex] == [b"sav_000001", b"sav_000002", b"sav_000003"]
    for g, w in zip(got_ex, want_ex, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            np.testing.assert_array_equal(np.asarray(g[k]), np.asarray(w[k]), err_msg=k)
    ex = got_ex[0]
    assert list(ex["frame_idx"]) == [0, 4, 8, 12, 16] and ex["num_objects"] == 2
    assert len(ex["masklet_rles"]) == 5 * 2


def test_sa1b_max_side_reencodes_masks(tmp_path):
    manual = tmp_path / "tars"
    manual.mkdir()
    synthetic.write_sa1b_tar(manual / "sa_000000.tar", 1, 2, 60, 80)
    cfg = sa1b_builder.Sa1bConfig(max_side=40)
    prepare("sa1b", manual, tmp_path / "data", cfg, num_workers=0, progress=False)
    ds = tfds.data_source("sa1b", split="train", data_dir=str(tmp_path / "data"))
    ex = ds[0]
    assert (ex["height"], ex["width"], ex["orig_height"], ex["orig_width"]) == (30, 40, 60, 80)
    assert jpeg.decode(ex["image"]).shape == (30, 40, 3)
    masks = rle.decode_many([{"size": [30, 40], "counts": c} for c in ex["mask_rles"]])
    np.testing.assert_array_equal(masks.reshape(len(masks), -1).sum(1), ex["mask_area"])


def test_cli_help_and_bad_manual_dir(tmp_path):
    script = os.path.join(ROOT, "scripts", "prepare_data.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--manual_dir" in out.stdout and "killed" in out.stdout
    bad = subprocess.run([sys.executable, script, "sav", "--manual_dir", str(tmp_path / "no"),
                          "--data_dir", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


@pytest.mark.parametrize("kind", ["sa1b", "sav"])
def test_empty_manual_dir_is_a_clear_error(tmp_path, kind):
    with pytest.raises(FileNotFoundError, match="no .* shards"):
        prepare(kind, tmp_path, tmp_path / "data", num_workers=0, progress=False)
