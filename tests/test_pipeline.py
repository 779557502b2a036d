"""The Grain training pipeline over prepared TFDS datasets (input_pipeline/pipeline.py):
SAM 2's samplers, fixed-shape batches, determinism across worker counts, exact resumption,
disjoint per-host slices covering the data, weighted mixing, and global jax.Arrays."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from input_pipeline import device, examples, rle, sampling, synthetic
from input_pipeline.pipeline import (
    PipelineConfig,
    SourceSpec,
    build,
    build_map_dataset,
    restore_state,
    save_state,
)
from input_pipeline.prepare import prepare

RES = 32
CLIP = sampling.ClipConfig(num_frames=4, max_objects=3)
IMAGE = sampling.ImageConfig(max_masks=8)
SA1B_IMAGES = 9
SAV_VIDEOS = 6  # + 1 too short for a 4-frame clip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """sav: 6 videos of 10 annotated frames (3 objects; one appears late) + 1 of 3 frames;
    sa1b: 9 images with 6 masks + an empty one + one covering 97 % of the image."""
    root = tmp_path_factory.mktemp("pipeline")
    raw_sav, raw_sa1b = root / "raw_sav", root / "raw_sa1b"
    raw_sav.mkdir()
    raw_sa1b.mkdir()
    synthetic.write_sav_tar(raw_sav / "sav_000.tar", list(range(1, SAV_VIDEOS + 1)), 48, 64,
                            n_frames=40, auto=False)
    synthetic.write_sav_tar(raw_sav / "sav_001.tar", [99], 48, 64, n_frames=12, auto=False,
                            folder="sav_001")
    synthetic.write_sa1b_tar(raw_sa1b / "sa_000000.tar", 1, SA1B_IMAGES, 40, 56)
    data = root / "data"
    prepare("sav", raw_sav, data, num_workers=0, progress=False)
    prepare("sa1b", raw_sa1b, data, num_workers=0, progress=False)
    return str(data)


def _cfg(**kw) -> PipelineConfig:
    return PipelineConfig(resolution=RES, clip=CLIP, image=IMAGE, **kw)


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- samplers

def _record(visible_from: list[int], n_t: int, h=8, w=8) -> dict:
    """A SA-V-like record: object k visible from annotated frame visible_from[k] on."""
    on, off = rle.encode(np.ones((h, w))), rle.encode(np.zeros((h, w)))
    rles = [(on if t >= f else off)["counts"].encode() for t in range(n_t) for f in visible_from]
    return {"frame_idx": np.arange(n_t) * 4, "num_objects": len(visible_from),
            "orig_height": h, "orig_width": w, "masklet_rles": rles}


def test_clip_sampler_follows_sam2():
    record = _record([0, 5, 5, 5, 9], n_t=12)
    reversed_count = 0
    for seed in range(200):
        c = sampling.sample_clip(record, np.random.default_rng(seed), CLIP)
        step = -1 if c.reversed else 1
        assert list(c.positions) == list(range(c.positions[0], c.positions[0] + 4 * step, step))
        first = c.positions[0]
        visible = [k for k, f in enumerate([0, 5, 5, 5, 9]) if first >= f]
        assert set(c.objects) <= set(visible)  # only objects visible in the clip's first frame
        assert len(c.objects) == min(3, len(visible))
        reversed_count += c.reversed
    assert 70 < reversed_count < 130  # p = 0.5
    assert sampling.sample_clip(_record([0], n_t=3), np.random.default_rng(0), CLIP) is None
    assert sampling.sample_clip(_record([99], n_t=8), np.random.default_rng(0), CLIP) is None


def test_clip_sampler_max_skip_gaps_fit_the_video():
    """max_skip k: gaps of 1..k annotated frames (every gap size occurs), capped so that the
    clip fits the video; k = 1 is the consecutive sampler, draw for draw."""
    record = _record([0, 0, 0], n_t=9)
    cfg = dataclasses.replace(CLIP, max_skip=3, reverse_p=0.0)
    gaps = set()
    for seed in range(200):
        c = sampling.sample_clip(record, np.random.default_rng(seed), cfg)
        d = np.diff(c.positions)
        assert len(c.positions) == 4 and ((d >= 1) & (d <= 2)).all(), c.positions  # 8 // 3 = 2
        assert 0 <= c.positions[0] and c.positions[-1] <= 8
        gaps |= set(d.tolist())
    assert gaps == {1, 2}
    long = _record([0, 0, 0], n_t=40)
    spans = [np.diff(sampling.sample_clip(long, np.random.default_rng(s), cfg).positions)
             for s in range(200)]
    assert set(np.concatenate(spans).tolist()) == {1, 2, 3}
    for seed in range(20):
        a = sampling.sample_clip(long, np.random.default_rng(seed), CLIP)
        b = sampling.sample_clip(long, np.random.default_rng(seed),
                                 dataclasses.replace(CLIP, max_skip=1))
        assert a == b
    with pytest.raises(ValueError, match="max_skip"):
        sampling.ClipConfig(max_skip=0)


def test_mask_sampler_filters_and_caps():
    area = np.array([0, 10, 20, 95, 89, 5, 7, 1, 2, 3, 4, 6], np.int64)  # image 10 x 10
    record = {"mask_area": area, "height": 10, "width": 10}
    chosen = sampling.sample_masks(record, np.random.default_rng(0), IMAGE)
    allowed = {i for i, a in enumerate(area) if 0 < a < 90}
    assert len(chosen) == 8 and set(chosen) <= allowed and list(chosen) == sorted(chosen)
    few = sampling.sample_masks({"mask_area": np.array([0, 95]), "height": 10, "width": 10},
                                np.random.default_rng(0), IMAGE)
    assert few == ()


# ------------------------------------------------------------------------------ batches

def test_batches_have_fixed_shapes_and_honest_padding(data_dir):
    specs = [SourceSpec("sav", data_dir, 2), SourceSpec("sa1b", data_dir, 3)]
    for spec, (t, o) in zip(specs, [(4, 3), (1, 8)]):
        for b in _take(build([spec], _cfg(), 0, 1), 4):
            bs = spec.batch_size
            assert b["images"].shape == (bs, t, RES, RES, 3) and b["images"].dtype == np.uint8
            assert b["masks"].shape == (bs, t, o, RES, RES) and b["masks"].dtype == bool
            assert b["obj_valid"].shape == (bs, o) and b["obj_ids"].shape == (bs, o)
            assert b["frame_idx"].shape == (bs, t) and b["orig_hw"].shape == (bs, 2)
            assert b["record_id"].shape == (bs,)
            valid = b["obj_valid"]
            assert valid[:, 0].all()  # at least one object per example
            assert not b["masks"][~valid[:, None, :].repeat(t, 1)].any()  # padding is empty
            assert (b["obj_ids"][~valid] == -1).all() and (b["obj_ids"][valid] >= 0).all()
            if spec.name == "sav":
                assert b["masks"][:, 0][valid].reshape(-1, RES * RES).any(1).all()  # visible
                steps = np.diff(b["frame_idx"], axis=1)
                assert np.all((steps == 4) | (steps == -4))  # consecutive 6 fps, maybe reversed
                assert (b["record_id"] != 99).all()  # the 3-frame video is never used
            else:
                assert (b["obj_valid"].sum(1) == 6).all()  # empty and 97 % masks dropped


def test_same_seed_same_batches_other_seed_other_batches(data_dir):
    specs = [SourceSpec("sav", data_dir, 2)]
    a = _take(build(specs, _cfg(seed=3), 0, 1), 3)
    b = _take(build(specs, _cfg(seed=3, num_threads=1, prefetch_buffer_size=1), 0, 1), 3)
    c = _take(build(specs, _cfg(seed=4), 0, 1), 3)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(_same(x, y) for x, y in zip(a, c))


@pytest.mark.slow
def test_identical_batches_for_0_1_2_workers_and_resume_with_workers(data_dir):
    specs = [SourceSpec("sav", data_dir, 2, weight=2), SourceSpec("sa1b", data_dir, 2)]
    runs = {n: _take(build(specs, _cfg(seed=7, num_workers=n), 0, 1), 6) for n in (0, 1, 2)}
    for n in (1, 2):
        assert all(_same(x, y) for x, y in zip(runs[0], runs[n])), n
    it = iter(build(specs, _cfg(seed=7, num_workers=2), 0, 1))
    for _ in range(3):
        next(it)
    state = it.get_state()
    fresh = iter(build(specs, _cfg(seed=7, num_workers=2), 0, 1))
    fresh.set_state(state)
    assert _same(next(fresh), runs[0][3])


def test_saved_state_resumes_at_exactly_the_next_batch(data_dir, tmp_path):
    specs = [SourceSpec("sav", data_dir, 2, weight=3), SourceSpec("sa1b", data_dir, 2)]
    it = iter(build(specs, _cfg(seed=1), 0, 1))
    for _ in range(5):
        next(it)
    save_state(it, tmp_path / "input_state.json")
    expected = [next(it) for _ in range(3)]
    fresh = iter(build(specs, _cfg(seed=1), 0, 1))
    restore_state(fresh, tmp_path / "input_state.json")
    assert all(_same(next(fresh), e) for e in expected)
    assert json.loads((tmp_path / "input_state.json").read_text())  # plain JSON


def test_iterator_state_in_an_orbax_checkpoint(data_dir, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    specs = [SourceSpec("sa1b", data_dir, 2)]
    it = iter(build(specs, _cfg(seed=2), 0, 1))
    next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("input",)) as mngr:
        mngr.save(1, args=ocp.args.Composite(input=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = next(it)
        fresh = iter(build(specs, _cfg(seed=2), 0, 1))
        mngr.restore(1, args=ocp.args.Composite(input=grain.checkpoint.CheckpointRestore(fresh)))
    assert _same(next(fresh), expected)


@pytest.mark.parametrize("name, n_records", [("sa1b", SA1B_IMAGES), ("sav", SAV_VIDEOS + 1)])
def test_two_hosts_get_disjoint_records_covering_the_dataset(data_dir, name, n_records):
    """One epoch, batch 1: host 0 and host 1 see disjoint records and together all of them but
    the n % 2 dropped to keep the hosts in step; the next epoch is another permutation."""
    clip = dataclasses.replace(CLIP, num_frames=2)  # every video, also the short one, qualifies
    cfg = PipelineConfig(resolution=RES, clip=clip, image=IMAGE, num_epochs=2)
    per_host = n_records // 2
    seen = []
    for host in (0, 1):
        ds = build_map_dataset([SourceSpec(name, data_dir, 1)], cfg, host, 2)
        assert len(ds) == 2 * per_host
        ids = [int(ds[i]["record_id"][0]) for i in range(len(ds))]
        assert len(set(ids[:per_host])) == per_host == len(set(ids[per_host:]))
        seen.append(ids)
    epoch0 = [set(ids[:per_host]) for ids in seen]
    assert not epoch0[0] & epoch0[1]
    assert len(epoch0[0] | epoch0[1]) == 2 * per_host
    orders = [ids[:per_host] for ids in seen], [ids[per_host:] for ids in seen]
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_weighted_mixing_gives_whole_batches_in_proportion(data_dir):
    specs = [SourceSpec("sav", data_dir, 1, weight=3), SourceSpec("sa1b", data_dir, 1, weight=1)]
    ds = build_map_dataset(specs, _cfg(), 0, 1)
    kinds = [ds[i]["images"].shape[1] for i in range(40)]  # T = 4 video, 1 image
    assert kinds.count(4) == 30 and kinds.count(1) == 10


def test_a_video_too_short_for_a_clip_is_replaced(data_dir):
    import tensorflow_datasets as tfds

    source = tfds.data_source("sav", split="train", data_dir=data_dir)
    short = next(i for i in range(len(source)) if source[i]["video_id"] == b"sav_000099")
    transform = examples.VideoClip(source, CLIP, None, examples.OutputConfig())
    out = transform.random_map(source[short], np.random.default_rng(0))
    assert out["record_id"] != 99 and out["images"].shape[0] == 4
    hopeless = examples.VideoClip(source, dataclasses.replace(CLIP, num_frames=50, max_records=3))
    with pytest.raises(RuntimeError, match="4 records in a row gave no 50-frame clip"):
        hopeless.random_map(source[0], np.random.default_rng(0))


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data.py sav"):
        build([SourceSpec("sav", str(tmp_path), 1)], _cfg(), 0, 1)
    with pytest.raises(ValueError, match="unknown dataset"):
        SourceSpec("mose", str(tmp_path), 1)  # not a prepared kind


# ------------------------------------------------------------------------------ device

def test_host_batches_become_sharded_global_arrays(data_dir):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    cfg = _cfg(output=examples.OutputConfig(pack_masks=True))
    host = _take(build([SourceSpec("sav", data_dir, 8)], cfg, 0, 1), 1)[0]
    batch = device.to_global(host, mesh)
    assert batch["images"].shape == (8, 4, RES, RES, 3)
    assert batch["images"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(batch["images"].addressable_shards) == 8
    masks = device.unpack_masks(batch["masks"], RES)
    np.testing.assert_array_equal(np.asarray(masks), np.unpackbits(host["masks"], -1) > 0)
    images = device.model_images(batch["images"])
    np.testing.assert_allclose(np.asarray(images),
                               examples.augment.normalize(host["images"]), atol=1e-5)
    with pytest.raises(TypeError, match="not a numpy array"):
        device.to_global({"name": ["a"] * 8}, mesh)
