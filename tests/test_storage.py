"""gs:// workdirs: the trainer's own files and the checkpoint look-ups on an object store.

There is no GCS here, so `fake_gcs` puts an in-memory fsspec file system behind etils.epath's
gs:// paths (the route epath takes without TensorFlow) and makes it behave like GCS where it
matters: no append. tensorboardX's gs:// writer is pointed at the same store. Orbax's own
array writes to gs:// go through TensorStore's GCS driver and are not exercised here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json

import fsspec
import jax
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from tam_jax import checkpointing as ckpt
from tam_jax import storage
from tam_jax.configs import get_config


class _FakeGCS(MemoryFileSystem):
    """Memory-backed "gs" / "gcs" file system that, like GCS, cannot append to an object."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes this for GCS
        super().__init__(*args, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise OSError(f"{path}: objects cannot be appended to")
        return super()._open(path, mode, **kwargs)


class _FakeGCSRecordWriter:
    """Like tensorboardX's GCSRecordWriter: buffers, and uploads the whole object on flush."""

    def __init__(self, path):
        self.path, self.buffer = path, b""

    def write(self, data):
        self.buffer += data

    def flush(self):
        with fsspec.filesystem("gs").open(self.path, "wb") as f:
            f.write(self.buffer)

    def close(self):
        self.flush()


class _TensorBoardToFakeGCS:
    """A tensorboardX record-writer factory for gs:// that writes into the fake store."""

    def open(self, path):
        return _FakeGCSRecordWriter(path)

    def directory_check(self, path):
        pass


@pytest.fixture
def fake_gcs():
    from tensorboardX import record_writer

    registry = importlib.import_module("fsspec.registry")  # (fsspec.registry is a mapping)

    saved = {n: registry._registry.get(n) for n in _FakeGCS.protocol}
    saved_tb = record_writer.REGISTERED_FACTORIES.get("gs")
    _FakeGCS.store = {}
    _FakeGCS.pseudo_dirs = [""]
    for name in _FakeGCS.protocol:
        fsspec.register_implementation(name, _FakeGCS, clobber=True)
    _FakeGCS.clear_instance_cache()
    record_writer.register_writer_factory("gs", _TensorBoardToFakeGCS())
    try:
        yield _FakeGCS.store
    finally:
        for name, cls in saved.items():
            if cls is None:
                registry._registry.pop(name, None)
            else:
                registry._registry[name] = cls
        if saved_tb is not None:
            record_writer.REGISTERED_FACTORIES["gs"] = saved_tb
        _FakeGCS.clear_instance_cache()


def test_as_path_keeps_local_paths_local_and_names_bad_schemes(tmp_path, monkeypatch,
                                                               fake_gcs):
    monkeypatch.chdir(tmp_path)
    local = storage.as_path("run")
    assert local == tmp_path / "run" and local.is_absolute()
    remote = storage.as_path("gs://bucket/run")
    assert str(remote / "checkpoints") == "gs://bucket/run/checkpoints"
    for bad in ("gcs://bucket/run", "http://host/run"):
        with pytest.raises(ValueError, match="unsupported URL scheme"):
            storage.as_path(bad)
    with pytest.raises(ValueError, match="a model directory .*gcsfuse"):
        ckpt.save_model("gs://bucket/model", {"w": np.ones(2, np.float32)}, "tiny")
    assert not (tmp_path / "gs:").exists()  # pathlib never got to make "gs:/bucket/..."


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None
                    or importlib.util.find_spec("tensorflow") is not None,
                    reason="a GCS file system is installed here")
def test_a_missing_gcs_package_is_named_up_front():
    with pytest.raises(ImportError, match=r"gs://bucket/run: .*pip install -e '.\[gcs\]'"):
        storage.as_path("gs://bucket/run")


def test_local_only_readers_name_the_url(tmp_path, monkeypatch, fake_gcs):
    from tam_jax.evaluation.weights import load_eval_model
    from tam_jax.predictors import load_weights

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="an evaluation checkpoint 'gs://b/run'.*gcsfuse"):
        load_eval_model("gs://b/run", "tiny")
    with pytest.raises(ValueError, match="an official .pt checkpoint 'gs://b/x.pt'"):
        load_weights("tiny", "gs://b/x.pt")
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic_local_and_remote(tmp_path, fake_gcs):
    local = tmp_path / "model.json"
    storage.write_text_atomic(local, "one")
    storage.write_text_atomic(local, "two")
    assert local.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.json"]
    remote = storage.as_path("gs://bucket/run/model.json")
    storage.write_text_atomic(remote, "three")
    assert remote.read_text() == "three"


def test_jsonl_log_on_an_object_store_rewrites_whole_objects_and_keeps_history(fake_gcs):
    path = storage.as_path("gs://bucket/run/metrics.jsonl")
    log = storage.JsonlLog(path, upload_every_s=3600)
    log.write('{"step": 1}')
    log.write('{"step": 2}')
    assert not path.exists()  # throttled: nothing uploaded yet
    log.close()
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    # a resumed run continues the same log (appending is impossible on the store)
    log = storage.JsonlLog(path, upload_every_s=0)
    log.write('{"step": 3}')
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2}', '{"step": 3}']
    log.close()


def test_jsonl_log_local_appends(tmp_path):
    path = storage.as_path(tmp_path / "metrics.jsonl")
    for step in (1, 2):
        log = storage.JsonlLog(path)
        log.write(json.dumps({"step": step}))
        assert path.read_text().count("\n") == step  # flushed at once
        log.close()


def test_trainer_files_in_a_gs_workdir(tmp_path, monkeypatch, fake_gcs):
    from ml_collections import ConfigDict

    from tam_jax.training import trainer

    monkeypatch.chdir(tmp_path)

    workdir = storage.as_path("gs://bucket/runs/a")
    config = ConfigDict({"model": {"variant": "tiny", "overrides": [("vit.depth", 2)]}})
    trainer.write_model_description(config, workdir)
    assert json.loads((workdir / "model.json").read_text()) == {
        "variant": "tiny", "overrides": [["vit.depth", 2]]}
    with trainer._MetricWriter(workdir, enabled=True) as writer:
        writer.write(1, {"train/loss": 2.5})
        writer.write(2, {"train/loss": 1.5})
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 1.5}]
    events = list((workdir / "tensorboard").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
    assert b"train/loss" in events[0].read_bytes()
    assert not (tmp_path / "gs:").exists()  # nothing went to a local "gs:/bucket" folder


def test_start_point_and_init_from_on_gs(tmp_path, fake_gcs):
    from tam_jax.convert.checkpoint import save_official_checkpoint

    assert ckpt.resolve_start("gs://bucket/fresh") == ckpt.StartPoint("scratch", None, 0)
    assert ckpt.latest_checkpoint_step("gs://bucket/fresh/checkpoints") is None
    with pytest.raises(ckpt.CheckpointError, match="gs://bucket/missing.pt: init_from names no"):
        ckpt.resolve_start("gs://bucket/fresh", init_from="gs://bucket/missing.pt")
    with pytest.raises(ckpt.CheckpointError, match="gs://bucket/other: no such directory"):
        ckpt.resolve_start("gs://bucket/fresh", resume="gs://bucket/other")

    from test_checkpointing import _tiny_params  # (tests/ is on sys.path under pytest)

    cfg, params = get_config("tiny"), _tiny_params()
    pt = save_official_checkpoint(params, cfg, tmp_path / "tiny.pt")
    remote = storage.as_path("gs://bucket/weights/tiny.pt")
    remote.parent.mkdir(parents=True, exist_ok=True)
    remote.write_bytes(pt.read_bytes())
    start = ckpt.resolve_start("gs://bucket/fresh", init_from="gs://bucket/weights/tiny.pt")
    assert start.kind == "init_from" and str(start.path) == "gs://bucket/weights/tiny.pt"
    loaded = ckpt.load_init_params(start.path, cfg)
    flat = lambda tree: {jax.tree_util.keystr(k): v
                         for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    assert flat(loaded).keys() == flat(params).keys()
    for key, value in flat(params).items():
        np.testing.assert_array_equal(flat(loaded)[key], value)
