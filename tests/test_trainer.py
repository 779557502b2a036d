"""The trainer end to end on CPU: synthetic SA-V in the raw format -> TFDS preparation -> Grain
-> sharded train steps on a (4, 2) mesh of fake devices -> Orbax checkpoints; a run stopped
after 3 steps and restarted with the same command continues with exactly the losses of an
uninterrupted run (same batches, same prompts, same rng), and the scripts' CLI works.

The micro config of experiments/tiny_local.py (one plan kind: one compile, shared through
JAX's persistent compilation cache between the runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import pytest

pytest.importorskip("grain")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from input_pipeline import synthetic  # noqa: E402
from input_pipeline.prepare import prepare  # noqa: E402
from scripts.train import apply_overrides, load_config  # noqa: E402
from tam_jax.training.trainer import train  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    raw = root / "raw"
    raw.mkdir()
    synthetic.write_sav_tar(raw / "sav_000.tar", [1, 2, 3, 4], 96, 128, n_frames=12, auto=False)
    prepare("sav", raw, root / "data", num_workers=0, progress=False)
    return str(root / "data")


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Share compiled steps between the runs of this module (each run jits afresh)."""
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def _config(data_dir, steps, **extra):
    c = load_config(str(Path(__file__).resolve().parents[1] / "experiments" / "tiny_local.py"))
    pairs = [f"data.sources.0.data_dir={data_dir}", f"train.num_steps={steps}",
             "train.log_every=1", "train.checkpoint_every=3", "mesh.data=4", "mesh.fsdp=2",
             "sharding_preset='fsdp'", "data.sources.0.batch_size=8"]
    pairs += [f"{k}={v}" for k, v in extra.items()]
    return apply_overrides(c, pairs)


def _losses(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().split("\n")
            if line]
    return {r["step"]: r["train/loss"] for r in rows}


def test_train_resume_is_exact_and_checkpoints(data_dir, tmp_path):
    full = tmp_path / "full"
    train(_config(data_dir, 6), full)
    want = _losses(full)
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    assert all(v == v and v > 0 for v in want.values())
    steps = sorted(int(p.name) for p in (full / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6 and 3 in steps
    assert (full / "tensorboard").is_dir()

    split = tmp_path / "split"
    train(_config(data_dir, 3), split)  # "killed" after its step-3 checkpoint
    train(_config(data_dir, 6), split)  # the same command again: resumes at step 3
    got = _losses(split)
    for step in range(1, 7):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), (step, got, want)


def test_train_script_help_and_bad_config(capsys):
    from scripts import train as script

    with pytest.raises(SystemExit) as e:
        script.main(["--help"])
    assert e.value.code == 0
    assert "--fake_devices" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        script.main(["--config", "experiments/nope.py", "--workdir", "/tmp/x"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        script.main(["--config", "experiments/tiny_local.py", "--workdir", "/tmp/x",
                     "--set", "train.num_steps"])


def test_data_video_aug_sets_the_clip_augmentation(data_dir, monkeypatch):
    """`data.video_aug` (AugmentConfig fields) replaces SAM 2's video recipe; the resolution
    is the model's. Without it the pipeline keeps its default (None -> SAM 2's recipe)."""
    from input_pipeline import augment, pipeline
    from tam_jax.training import trainer

    seen = []
    monkeypatch.setattr(pipeline, "build", lambda specs, cfg, *a: seen.append(cfg) or iter(()))
    c = _config(data_dir, 1)
    model_cfg = trainer.model_config(c)
    trainer.build_data(c, model_cfg)
    assert seen[-1].video_aug is None
    assert seen[-1].augment_for("sav") == augment.AugmentConfig(resolution=model_cfg.image_size)
    c = apply_overrides(c, ['data.video_aug={"degrees": 0.0, "shear": 0.0, "hflip_p": 0.0}'])
    trainer.build_data(c, model_cfg)
    want = augment.AugmentConfig(resolution=model_cfg.image_size, degrees=0.0, shear=0.0,
                                 hflip_p=0.0)
    assert seen[-1].augment_for("sav") == want
    with pytest.raises(KeyError, match="no field"):
        trainer.build_data(apply_overrides(c, ['data.video_aug={"rotate": 1.0}']), model_cfg)


def test_logged_rows_are_window_means_per_batch_kind():
    """A row stands for every step since the last one: means over them, and per batch kind
    when the config mixes image and video datasets (a logged step alone would show whichever
    kind it drew)."""
    import ml_collections

    from tam_jax.training.trainer import _MetricWindow

    def cfg(*names):
        return ml_collections.ConfigDict({"data": {"sources": [{"name": n} for n in names]}})

    w = _MetricWindow(cfg("sav", "sa1b"))
    for loss, iou, frames in ((3.0, 0.5, 3), (5.0, 0.7, 3), (12.0, 0.0, 1)):
        w.add({"loss": loss, "iou": iou, "lr": 1e-3}, frames)
    row = w.means()
    assert row["train/loss"] == pytest.approx(20.0 / 3)
    assert row["train_video/loss"] == pytest.approx(4.0)
    assert row["train_video/iou"] == pytest.approx(0.6)
    assert row["train_image/loss"] == pytest.approx(12.0)
    assert row["train/lr"] == pytest.approx(1e-3) and "train_video/lr" not in row
    w.add({"loss": 2.0, "iou": 0.9, "lr": 1e-3}, 3)  # the next window starts empty
    assert w.means() == {"train/loss": 2.0, "train/iou": 0.9, "train/lr": 1e-3,
                         "train_video/loss": 2.0, "train_video/iou": 0.9}
    only_video = _MetricWindow(cfg("sav"))
    only_video.add({"loss": 1.0}, 8)
    assert only_video.means() == {"train/loss": 1.0}
