"""Readers of the original dataset formats, on synthetic data we write in those formats and on
the two real SA-V annotation files of ../shared/data/sav_example (data_and_eval.md §1-§2)."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from input_pipeline import folders, jpeg, rle, sa1b, sav, synthetic
from input_pipeline.errors import CorruptRecord

SAV_EXAMPLE = os.path.join(os.path.dirname(__file__), "data", "sav_example")


def _real_example(kind):
    with open(os.path.join(SAV_EXAMPLE, f"sav_000001_{kind}.json"), "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------ RLE
def test_rle_known_strings_and_roundtrip():
    assert rle.runs_from_string("52203") == [5, 2, 2, 2, 5]  # 4x4 with a 2x2 square
    assert rle.decode({"size": [848, 480], "counts": "P`]<"}).sum() == 0
    assert rle.decode({"size": [1500, 2000], "counts": "0Pfak2"}).all()
    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (7, 5), (64, 48)):
        m = rng.random((h, w)) < 0.3
        enc = rle.encode(m)
        ref = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert enc == {"size": [h, w], "counts": ref}
        assert sum(rle.runs_from_string(enc["counts"])) == h * w
        np.testing.assert_array_equal(rle.decode(enc), m)
        np.testing.assert_array_equal(rle.decode_many([enc, enc])[1], m)
        assert rle.area(enc) == m.sum()


@pytest.mark.parametrize("bad, match", [
    ({"size": [4, 4], "counts": "5220"}, "cover"),  # runs sum to 11
    ({"size": [4, 5], "counts": "52203"}, "cover"),  # size disagrees with the runs
    ({"size": [4, 4], "counts": "5220f"}, "truncated"),  # continuation bit on the last char
    ({"size": [4, 4], "counts": "52 03"}, "alphabet"),
    ({"size": [4], "counts": "52203"}, "size"),
    ({"counts": "52203"}, "'size'"),
    ({"size": [4, 4], "counts": [5, -2, 13]}, "counts"),
])
def test_rle_check_rejects_malformed(bad, match):
    with pytest.raises(rle.RleError, match=match):
        rle.check(bad)


def test_rle_check_against_image_size():
    good = rle.encode(np.ones((6, 8), bool))
    assert rle.check(good, (6, 8)) == (6, 8)
    with pytest.raises(rle.RleError, match="image size"):
        rle.check(good, (8, 6))


# ------------------------------------------------------------------------------------ SA-1B
def test_sa1b_tar_roundtrip(tmp_path):
    path = tmp_path / "sa_000000.tar"
    ids = synthetic.write_sa1b_tar(path, first_id=100, num_images=5, h=60, w=80, seed=3)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert any(n.startswith("./") for n in names) and any(not n.startswith("./") for n in names)
    out = list(sa1b.read_tar(path))
    assert all(isinstance(o, sa1b.Sa1bImage) for o in out), out
    assert sorted(o.image_id for o in out) == ids
    for o in out:
        _, want = synthetic.sa1b_image(3 * 100_003 + o.image_id, 60, 80)
        got = rle.decode_many([a["segmentation"] for a in o.annotations])
        np.testing.assert_array_equal(got, want)
        assert [a["area"] for a in o.annotations] == list(want.reshape(len(want), -1).sum(1))
        assert jpeg.checked_decode(o.jpeg, str(path), o.file_name, (60, 80)).shape == (60, 80, 3)
        assert o.skipped == []


def test_sa1b_scene_sets_object_sizes(tmp_path):
    """The demo draws its SA-1B images with its videos' object sizes (`scene`); the default
    scene is the one the tests were written on (same pixels as before the argument)."""
    small = synthetic.SceneConfig(radius=(0.05, 0.05))
    large = synthetic.SceneConfig(radius=(0.25, 0.25))
    area = lambda m: m[:-2].sum((1, 2)).max()  # the largest object mask (without the extras)
    _, m_small = synthetic.sa1b_image(5, 64, 64, n_masks=3, scene=small)
    _, m_large = synthetic.sa1b_image(5, 64, 64, n_masks=3, scene=large)
    assert m_small.shape == m_large.shape == (5, 64, 64)
    assert area(m_large) > 4 * area(m_small)
    np.testing.assert_array_equal(synthetic.sa1b_image(5, 64, 64)[1],
                                  synthetic.sa1b_image(5, 64, 64, scene=synthetic.SceneConfig())[1])
    path = tmp_path / "sa_000000.tar"
    synthetic.write_sa1b_tar(path, 1, 2, 64, 64, seed=4, n_masks=3, scene=large)
    for o in sa1b.read_tar(path):
        want = synthetic.sa1b_image(4 * 100_003 + o.image_id, 64, 64, 3, large)[1]
        np.testing.assert_array_equal(
            rle.decode_many([a["segmentation"] for a in o.annotations]), want)


def _tar_with(tmp_path, members):
    path = tmp_path / "sa_000001.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            synthetic._add(tar, name, data, 0)
    return path


def test_sa1b_corruptions_are_reported_not_raised(tmp_path):
    image, masks = synthetic.sa1b_image(0, 30, 40, n_masks=2)
    rng = np.random.default_rng(0)
    good_jpg = jpeg.encode(image)
    doc = synthetic.sa1b_json(7, masks, rng)
    doc["annotations"][1]["segmentation"]["size"] = [40, 30]  # disagrees with the image
    no_image = {"annotations": []}
    members = [("sa_7.jpg", good_jpg), ("sa_7.json", json.dumps(doc).encode()),
               ("sa_8.jpg", good_jpg), ("sa_8.json", b"{not json"),
               ("sa_9.jpg", good_jpg), ("sa_9.json", json.dumps(no_image).encode()),
               ("sa_10.jpg", good_jpg[: len(good_jpg) // 2]),
               ("sa_10.json", json.dumps(synthetic.sa1b_json(10, masks, rng)).encode()),
               ("sa_11.jpg", good_jpg)]
    out = list(sa1b.read_tar(_tar_with(tmp_path, members)))
    images = [o for o in out if isinstance(o, sa1b.Sa1bImage)]
    bad = {(o.record, o.kind) for o in out if isinstance(o, CorruptRecord)}
    assert sorted(i.image_id for i in images) == [7, 10]  # 10's JPEG is checked on decode
    seven = next(i for i in images if i.image_id == 7)
    assert len(seven.annotations) == len(masks) - 1
    assert [(s.record, s.kind) for s in seven.skipped] == [("sa_7.json#annotation1",
                                                           "rle_size_mismatch")]
    assert bad == {("sa_8.json", "bad_json"), ("sa_9.json", "missing_keys"),
                   ("sa_11.json", "missing_json")}
    ten = next(i for i in images if i.image_id == 10)
    with pytest.raises(CorruptRecord, match="bad_jpeg"):
        jpeg.checked_decode(ten.jpeg, "x.tar", "sa_10.jpg")


def test_sa1b_truncated_tar_keeps_what_came_before(tmp_path):
    path = tmp_path / "sa_000002.tar"
    synthetic.write_sa1b_tar(path, first_id=1, num_images=4, h=40, w=50)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    out = list(sa1b.read_tar(cut))
    kinds = [o.kind for o in out if isinstance(o, CorruptRecord)]
    assert "truncated_tar" in kinds
    assert 1 <= sum(isinstance(o, sa1b.Sa1bImage) for o in out) < 4


# ------------------------------------------------------------------------------------ SA-V
def test_sav_real_example_annotations():
    manual = sav.parse_json(_real_example("manual"), "sav_000001_manual.json", "sav_000001")
    assert (manual.height, manual.width, manual.frame_count) == (848, 480, 483)
    assert manual.num_annotated == sav.expected_annotated(483) == 121
    assert manual.obj_ids == [0, 1, 2, 3, 4]
    assert manual.first_frame[3] == 113  # the object that appears late in the real file
    auto = sav.parse_json(_real_example("auto"), "sav_000001_auto.json", "sav_000001")
    assert len(auto.obj_ids) == 9 and auto.first_frame == [0] * 9
    masks = rle.decode_many([manual.rles[113][k] for k in range(5)])
    assert masks.shape == (5, 848, 480) and masks[3].any()
    assert not rle.decode(manual.rles[112][3]).any()  # absent = all-zero RLE, not null


def test_sav_real_example_with_a_synthetic_mp4_of_its_size(tmp_path):
    # the real JSON + an mp4 of the same size and frame count (848 x 480, 483 frames)
    frames = np.zeros((483, 848, 480, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(483) % 256)[:, None, None]
    path = tmp_path / "sav_000.tar"
    with tarfile.open(path, "w") as tar:
        synthetic._add(tar, "sav_train/sav_000/sav_000001.mp4", synthetic.encode_mp4(frames), 0)
        synthetic._add(tar, "sav_train/sav_000/sav_000001_manual.json", _real_example("manual"), 0)
        synthetic._add(tar, "sav_train/sav_000/sav_000001_auto.json", _real_example("auto"), 0)
    (video,) = list(sav.read_tar(path))
    assert video.video_id == "sav_000001" and len(video.auto.obj_ids) == 9
    extracted = sav.extract_frames(video.mp4, str(path), video.video_id)
    assert [t for t, _ in extracted] == list(range(0, 483, 4))
    assert len(extracted) == video.manual.num_annotated
    assert extracted[0][1].shape == (848, 480, 3)


def test_sav_tar_roundtrip(tmp_path):
    path = tmp_path / "sav_000.tar"
    vids = synthetic.write_sav_tar(path, [5, 6], h=48, w=64, n_frames=21, n_objects=2, seed=1)
    out = list(sav.read_tar(path))
    assert [o.video_id for o in out] == vids
    for o, num in zip(out, [5, 6]):
        frames, masks = synthetic.sav_video(1 * 7919 + num, 48, 64, 21, 2)
        assert o.manual.num_annotated == len(masks) == 6
        extracted = sav.extract_frames(o.mp4, str(path), o.video_id)
        assert [t for t, _ in extracted] == [0, 4, 8, 12, 16, 20]
        # lossy H.264: the frames are close, not equal
        err = np.abs(extracted[2][1].astype(int) - frames[8].astype(int)).mean()
        assert err < 12, err
        got = np.stack([rle.decode_many(fr) for fr in o.manual.rles])
        np.testing.assert_array_equal(got, masks[:, o.manual.obj_ids])
        assert len(o.auto.obj_ids) >= 1


def test_sav_corruptions(tmp_path):
    frames, masks = synthetic.sav_video(0, 32, 48, 9, n_objects=2)
    good = synthetic.sav_json("sav_000001", masks, 9)
    mp4 = synthetic.encode_mp4(frames)
    empty_obj = json.loads(json.dumps(good))
    empty_obj["masklet"] = [[fr[0], rle.encode(np.zeros((32, 48)))] for fr in good["masklet"]]
    wrong = json.loads(json.dumps(good))
    wrong["masklet"][1][0] = rle.encode(np.zeros((48, 32)))
    nothing = json.loads(json.dumps(good))
    nothing["masklet"] = [[rle.encode(np.zeros((32, 48)))] * 2 for _ in good["masklet"]]
    missing = {k: v for k, v in good.items() if k != "video_height"}
    path = tmp_path / "sav_001.tar"
    dump = lambda d: json.dumps(d).encode()
    with tarfile.open(path, "w") as tar:
        for vid, doc, video in [("sav_000001", empty_obj, mp4), ("sav_000002", wrong, mp4),
                                ("sav_000003", nothing, mp4), ("sav_000004", missing, mp4),
                                ("sav_000005", good, mp4[: len(mp4) // 3])]:
            synthetic._add(tar, f"sav_train/sav_001/{vid}.mp4", video, 0)
            synthetic._add(tar, f"sav_train/sav_001/{vid}_manual.json", dump(doc), 0)
    out = {getattr(o, "video_id", None) or o.record: o for o in sav.read_tar(path)}
    one = out["sav_000001"]
    assert one.manual.obj_ids == [0] and one.manual.skipped[0].kind == "empty_masklets"
    two = out["sav_000002"]
    assert two.manual.obj_ids == [1] and two.manual.skipped[0].kind == "rle_size_mismatch"
    assert out["sav_000003_manual.json"].kind == "empty_masklets"
    assert out["sav_000004_manual.json"].kind == "missing_keys"
    with pytest.raises(CorruptRecord) as err:
        sav.extract_frames(out["sav_000005"].mp4, str(path), "sav_000005")
    assert err.value.kind == "bad_mp4" and "sav_000005" in str(err.value)


# ------------------------------------------------------------------------------------ folders
@pytest.mark.parametrize("png_mode", ["L", "P"])
def test_sav_eval_folder(tmp_path, png_mode):
    synthetic.write_sav_eval_folder(tmp_path, ["sav_000010", "sav_000011"], h=32, w=48,
                                    n_frames=9, n_objects=2, seed=2, png_mode=png_mode)
    videos = list(folders.read_sav_eval(tmp_path, "sav_val"))
    assert [v.video_id for v in videos] == ["sav_000010", "sav_000011"]
    v = videos[0]
    assert sorted(v.frames) == list(range(9)) and v.annotated_frames == [0, 4, 8]
    _, masks = synthetic.render_video(2 * 31 + 0, 32, 48, 9, 2)
    got = v.object_masks(4)
    np.testing.assert_array_equal(np.stack([got[0], got[1]]), masks[4])


def test_davis_folder(tmp_path):
    synthetic.write_davis_folder(tmp_path, ["bear"], h=32, w=48, n_frames=4, n_objects=2, seed=5)
    (v,) = list(folders.read_davis(tmp_path, split="train"))
    assert v.video_id == "bear" and sorted(v.frames) == [0, 1, 2, 3]
    _, masks = synthetic.render_video(5 * 17, 32, 48, 4, 2)
    got = v.object_masks(2)
    for k in range(2):
        if masks[2, k].any():
            np.testing.assert_array_equal(got[k + 1], masks[2, k])


def test_binary_png_with_three_values_is_an_error(tmp_path):
    from PIL import Image

    p = tmp_path / "00000.png"
    Image.fromarray(np.array([[0, 1, 2]], np.uint8), mode="L").save(p)
    with pytest.raises(CorruptRecord, match="3 distinct values"):
        folders.load_binary_png(str(p))


def test_make_synthetic_data_script_writes_every_format(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_synthetic_data.py")
    spec = importlib.util.spec_from_file_location("make_synthetic_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path), "--shards", "1", "--per_shard", "2",
                        "--height", "32", "--width", "48", "--frames", "9",
                        "--objects", "2"]) == 0
    images = list(sa1b.read_tar(tmp_path / "sa1b" / "sa_000000.tar"))
    assert [i.image_id for i in images] == [1, 2]
    videos = list(sav.read_tar(tmp_path / "sav" / "sav_000.tar"))
    assert [v.video_id for v in videos] == ["sav_000001", "sav_000002"]
    assert len(list(folders.read_sav_eval(tmp_path / "sav_val", "sav_val"))) == 2
    assert len(list(folders.read_davis(tmp_path / "davis", split="train"))) == 2
