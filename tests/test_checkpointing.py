"""Training checkpoints (tam_jax/checkpointing.py) on 8 fake CPU devices: a sharded train state
(params, adamw state, step, typed PRNG key) saved on a (2, 4) mesh restores equal onto (1, 8)
and (8, 1) meshes; retention and save decisions; async saves; the Grain iterator position;
half-written step directories; the SIGTERM guard; start-point resolution; init params."""

from __future__ import annotations

import functools
import os
import signal
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tam_jax import checkpointing as ckpt
from tam_jax.configs import get_config
from tam_jax.models.tam import abstract_param_shapes

AXES = ("data", "fsdp")


def _mesh(shape: tuple[int, int]) -> Mesh:
    return Mesh(np.array(jax.devices()).reshape(shape), AXES)


def _shardings(tree, mesh: Mesh):
    """The (8, 16) matrix (and its adam moments) over "fsdp", everything else replicated."""
    return jax.tree.map(
        lambda x: NamedSharding(mesh, P(None, "fsdp") if x.shape == (8, 16) else P()), tree)


def _train_state(mesh: Mesh) -> dict:
    params = {"w": jnp.arange(128, dtype=jnp.float32).reshape(8, 16) / 7,
              "b": jnp.linspace(-1.0, 1.0, 16), "scale": jnp.float32(2.0)}
    opt = optax.adamw(1e-2)
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
    _, opt_state = opt.update(grads, opt.init(params), params)  # non-zero moments, count 1
    state = {"params": params, "opt_state": opt_state, "step": jnp.asarray(7, jnp.int32),
             "rng": jax.random.key(42)}
    return jax.device_put(state, _shardings(state, mesh))


def _abstract(state, mesh: Mesh):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, _shardings(state, mesh))


def _host(tree):
    """numpy copies, typed keys as their raw key data."""
    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)
    return jax.tree.map(one, tree)


def _assert_same(restored, expected) -> None:
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, _host(restored), _host(expected))


def _small(value: float) -> dict:
    return {"x": jnp.full((2,), value, jnp.float32)}


def _small_abstract() -> dict:
    sharding = NamedSharding(_mesh((1, 8)), P())
    return {"x": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=sharding)}


def _batches() -> grain.DatasetIterator:
    return iter(grain.MapDataset.range(20).shuffle(seed=0).batch(2).to_iter_dataset())


# ------------------------------------------------------------------------ save and restore

def test_sharded_state_restores_onto_other_meshes(tmp_path):
    state = _train_state(_mesh((2, 4)))
    assert state["params"]["w"].sharding.spec == P(None, "fsdp")
    with ckpt.TrainCheckpointer(tmp_path, async_save=False) as saver:
        assert saver.save(7, state)
        for shape in [(1, 8), (8, 1)]:
            mesh = _mesh(shape)
            abstract = _abstract(state, mesh)
            restored = saver.restore(abstract)
            _assert_same(restored, state)
            assert restored["rng"].dtype == state["rng"].dtype  # still a typed key
            for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
                assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
            # split over "fsdp" as requested: 8 ways on (1, 8), whole on (8, 1)
            shard = restored["params"]["w"].addressable_shards[0].data
            assert shard.shape == (8, 16 // mesh.shape["fsdp"])


def test_retention_keeps_the_last_n_and_every_kth(tmp_path):
    with ckpt.TrainCheckpointer(tmp_path, keep_last=2, keep_every=4, async_save=False) as saver:
        for step in range(1, 11):
            assert saver.save(step, _small(step))
        assert saver.all_steps() == [4, 8, 9, 10]
    on_disk = {p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()}
    assert on_disk == {"4", "8", "9", "10"}
    assert ckpt.latest_checkpoint_step(tmp_path / "checkpoints") == 10


def test_save_decisions(tmp_path):
    with ckpt.TrainCheckpointer(tmp_path, save_every=3, async_save=False) as saver:
        saved = [step for step in range(1, 8) if saver.save(step, _small(step))]
        assert saved == [3, 6]  # no extra "initial" save at step 1
        assert saver.save(7, _small(7), force=True)  # e.g. on preemption
        assert not saver.save(7, _small(7), force=True)  # already saved: skipped, no error
        with pytest.raises(ckpt.CheckpointError, match="before the latest"):
            saver.save(5, _small(5), force=True)
        assert saver.all_steps() == [3, 6, 7]


def test_async_save_then_restore_after_wait(tmp_path):
    state = _train_state(_mesh((2, 4)))
    with ckpt.TrainCheckpointer(tmp_path, async_save=True) as saver:
        assert saver.save(3, state)
        assert saver.latest_step() == 3  # counted while in flight
        saver.wait()
        assert ckpt.latest_checkpoint_step(saver.directory) == 3  # on disk, committed
        _assert_same(saver.restore(_abstract(state, _mesh((1, 8)))), state)


def test_data_iterator_resumes_at_the_next_batch(tmp_path):
    it = _batches()
    for _ in range(3):
        next(it)
    with ckpt.TrainCheckpointer(tmp_path, async_save=True) as saver:
        saver.save(3, _small(3.0), data_iterator=it)
        expected = next(it)  # the position was captured when save() returned
        next(it)
        saver.wait()
        fresh = _batches()
        restored = saver.restore(_small_abstract(), data_iterator=fresh)
    np.testing.assert_array_equal(next(fresh), expected)
    np.testing.assert_array_equal(restored["x"], [3.0, 3.0])


def test_half_written_step_directory_is_ignored(tmp_path):
    with ckpt.TrainCheckpointer(tmp_path, async_save=False) as saver:
        saver.save(1, _small(1.0))
        saver.save(2, _small(2.0))
    # What a save killed mid-write leaves behind: Orbax's temporary name, renamed only at the end.
    partial = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_text("half")
    assert ckpt.latest_checkpoint_step(tmp_path / "checkpoints") == 2
    assert ckpt.resolve_start(tmp_path).step == 2
    with ckpt.TrainCheckpointer(tmp_path, async_save=False) as saver:
        assert saver.latest_step() == 2
        np.testing.assert_array_equal(saver.restore(_small_abstract())["x"], [2.0, 2.0])
        assert saver.save(3, _small(3.0))  # the leftover is cleaned up, then step 3 written
        np.testing.assert_array_equal(saver.restore(_small_abstract())["x"], [3.0, 3.0])
    assert not partial.exists()


def test_restore_errors(tmp_path):
    with ckpt.TrainCheckpointer(tmp_path, async_save=False) as saver:
        with pytest.raises(ckpt.CheckpointError, match="no finished checkpoint"):
            saver.restore(_small_abstract())
        saver.save(1, _small(1.0))
        with pytest.raises(ckpt.CheckpointError, match="no checkpoint for step 5"):
            saver.restore(_small_abstract(), step=5)
        with pytest.raises(ckpt.CheckpointError, match="without a data iterator"):
            saver.restore(_small_abstract(), data_iterator=_batches())
        with pytest.raises(ValueError, match="without a sharding"):
            saver.restore({"x": jax.ShapeDtypeStruct((2,), jnp.float32)})


# ------------------------------------------------------------------------------ preemption

def test_preemption_guard_sets_a_flag_and_restores_the_handler():
    outer_calls = []

    def outer(signum, frame):
        outer_calls.append(signum)

    previous = signal.signal(signal.SIGTERM, outer)
    try:
        with ckpt.PreemptionGuard() as guard:
            assert not guard.requested and not guard.should_stop(1)
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5  # Python runs the handler at the next bytecode
            while not guard.requested and time.monotonic() < deadline:
                time.sleep(0.01)
            assert guard.requested and guard.should_stop(2)  # and we are still alive
        assert signal.getsignal(signal.SIGTERM) is outer
        assert outer_calls == []  # the guard took the signal, not the outer handler
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- start point

def _run_with_checkpoint(workdir, step: int, value: float) -> None:
    with ckpt.TrainCheckpointer(workdir, async_save=False) as saver:
        saver.save(step, _small(value))


def test_resolve_start_order(tmp_path):
    work, other = tmp_path / "work", tmp_path / "other"
    model_dir = ckpt.save_model(tmp_path / "model", {"w": np.ones(2, np.float32)}, "tiny")

    assert ckpt.resolve_start(work) == ckpt.StartPoint("scratch", None, 0)
    start = ckpt.resolve_start(work, init_from=model_dir)
    assert (start.kind, start.path, start.step) == ("init_from", model_dir, 0)
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        ckpt.resolve_start(work, init_from=tmp_path / "missing.pt")
    with pytest.raises(ckpt.CheckpointError, match="official .pt file, a tam_jax model .*"
                       "or a training run"):
        ckpt.resolve_start(work, init_from=tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="no finished training checkpoint"):
        ckpt.resolve_start(work, resume=model_dir)
    # an unknown URL scheme is refused by name (pathlib would make "gcs:/b/run" a local
    # folder); gs:// / s3:// are accepted (tests/test_storage.py)
    for kw in ({"workdir": "gcs://bucket/run"}, {"workdir": work, "resume": "http://b/other"},
               {"workdir": work, "init_from": "ftp://b/model.pt"}):
        with pytest.raises(ValueError, match="unsupported URL scheme"):
            ckpt.resolve_start(**kw)
    assert not (tmp_path / "gcs:").exists() and not (tmp_path / "http:").exists()

    _run_with_checkpoint(other, 5, 5.0)
    for resume in (other, other / "checkpoints"):  # a workdir or its checkpoints directory
        start = ckpt.resolve_start(work, resume=resume, init_from=model_dir)
        assert start == ckpt.StartPoint("resume", other / "checkpoints", 5)
    restored = ckpt.restore_train_state(start.path, _small_abstract(), start.step)
    np.testing.assert_array_equal(restored["x"], [5.0, 5.0])

    _run_with_checkpoint(work, 2, 2.0)
    start = ckpt.resolve_start(work, resume=other, init_from=model_dir)
    assert start == ckpt.StartPoint("workdir", work / "checkpoints", 2)


# ----------------------------------------------------------------------------- init params

@functools.cache
def _tiny_params() -> dict:
    """Random params with exactly the tree and shapes of `init_params(get_config("tiny"))`,
    built from the model's eval_shape: the jitted init takes a minute on a busy 2-core CPU and
    a checkpoint test only needs the structure and distinct values."""
    rng = np.random.default_rng(0)
    params: dict = {}
    for path, shape in abstract_param_shapes(get_config("tiny")).items():
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = rng.standard_normal(shape).astype(np.float32)
    return params


def test_load_init_params_from_a_model_dir(tmp_path):
    params = _tiny_params()
    model_dir = ckpt.save_model(tmp_path / "model", params, "tiny")
    loaded = ckpt.load_init_params(model_dir, get_config("tiny"))
    _assert_same(loaded, params)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))


def test_load_init_params_names_the_file_and_lists_mismatches(tmp_path):
    model_dir = ckpt.save_model(tmp_path / "model", _tiny_params(), "tiny")
    wide = get_config("tiny", **{"vit.embed_dim": 48})  # another variant: a wider trunk
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_init_params(model_dir, wide)
    message = str(err.value)
    assert str(model_dir) in message and "variant tiny" in message
    assert "shape mismatch (" in message and "checkpoint (32,), model (48,)" in message
    assert "more" in message  # a long list is cut, with its count
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        ckpt.load_init_params(tmp_path / "missing.pt", get_config("tiny"))


def test_load_init_params_lists_missing_and_unexpected(tmp_path):
    params = jax.tree.map(lambda x: x, _tiny_params())  # a copy to damage
    params["image_encoder"]["extra"] = np.zeros(3, np.float32)
    del params["sam_mask_decoder"]
    model_dir = ckpt.save_model(tmp_path / "model", params, "tiny")
    with pytest.raises(ckpt.CheckpointError, match=r"missing \(\d+\).*\n.*unexpected \(1\)"):
        ckpt.load_init_params(model_dir, get_config("tiny"))


def test_load_init_params_from_a_training_run(tmp_path):
    """Stage 2 starts from stage 1: init_from names the stage-1 workdir (or its checkpoints
    directory) and takes the params of its latest checkpoint, not its optimiser or step."""
    params = _tiny_params()
    with ckpt.TrainCheckpointer(tmp_path / "stage1", async_save=False) as saver:
        saver.save(7, {"params": jax.tree.map(jnp.asarray, params), "step": jnp.int32(7)})
    for init_from in (tmp_path / "stage1", tmp_path / "stage1" / "checkpoints"):
        start = ckpt.resolve_start(tmp_path / "stage2", init_from=init_from)
        assert start == ckpt.StartPoint("init_from", tmp_path / "stage1" / "checkpoints", 0)
        _assert_same(ckpt.load_init_params(init_from, get_config("tiny")), params)
    wide = get_config("tiny", **{"vit.embed_dim": 48})
    with pytest.raises(ckpt.CheckpointError, match="training checkpoint, step 7"):
        ckpt.load_init_params(tmp_path / "stage1", wide)


def test_load_init_params_from_an_official_pt(tmp_path):
    from tam_jax.convert.checkpoint import save_official_checkpoint

    cfg = get_config("tiny")
    pt = save_official_checkpoint(_tiny_params(), cfg, tmp_path / "tiny.pt")
    _assert_same(ckpt.load_init_params(pt, cfg), _tiny_params())
    broken = tmp_path / "broken.pt"
    broken.write_bytes(pt.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match="broken.pt"):
        ckpt.load_init_params(broken, cfg)
