"""`make demo` end to end at smoke size (scripts/demo.py with the micro config, 2 steps, 2
held-out videos): every stage runs (synthetic data -> TFDS -> trainer -> three evaluations ->
loss curve and GIFs -> summary), a rerun resumes instead of redoing, and the loss-curve
plotting reads metrics.jsonl as the trainer writes it. The demo's real targets (J&F >= 0.75,
+0.15 over the copy baseline) are measured by `make demo` itself (docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tam_jax.evaluation.plots import line_chart, nice_ticks, read_metrics


def test_nice_ticks_and_metrics_reader(tmp_path):
    assert nice_ticks(0, 400) == [0, 100, 200, 300, 400]
    assert nice_ticks(-0.3, 1.7) == [0.0, 0.5, 1.0, 1.5]
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "train/loss": 5.0}\n{"step": 2, "perf/x": 1}\n'
                 '{"step": 3, "train/loss": 2.0}\n\n{"step": 3, "train/loss": 1.5}\n')
    steps, values = read_metrics(f, "train/loss")
    assert steps.tolist() == [1, 3] and values.tolist() == [5.0, 1.5]  # resumed step replaced
    f.write_text('{"step": 1, "train/loss": 5.0}\nnot json\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(f, "train/loss")


def test_line_chart_draws_each_series(tmp_path):
    x = np.arange(10)
    path = line_chart({"a": (x, 10.0 - x), "b": (x, 1.0 + x)}, tmp_path / "c.png", log_y=True)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (440, 720, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 5  # lines, text, grid: not blank
    with pytest.raises(ValueError, match="log scale"):
        line_chart({"a": (x, x - 1.0)}, tmp_path / "d.png", log_y=True)
    with pytest.raises(ValueError, match="nothing to plot"):
        line_chart({"a": ([], [])}, tmp_path / "e.png")


@pytest.mark.slow
def test_demo_runs_end_to_end_at_smoke_size(tmp_path, capsys):
    from scripts import demo

    argv = ["--workdir", str(tmp_path / "demo"), "--config_arg", "micro", "--num_steps", "2",
            "--set", "train.checkpoint_every=2", "--set", "train.log_every=1",
            # the suite runs on 8 fake CPU devices: one clip (image) per device; equal weights
            # so that the 2 steps are one video and one SA-1B image batch
            "--set", "data.sources.0.batch_size=8", "--set", "data.sources.1.batch_size=8",
            "--set", "data.sources.0.weight=0.5", "--set", "data.sources.1.weight=0.5",
            "--train_shards", "1", "--image_shards", "1", "--eval_videos", "2", "--frames", "16",
            "--objects", "2", "--distractors", "0"]
    assert demo.main(argv) == 0
    work = tmp_path / "demo"
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary["scores"]) == {"trained", "untrained", "copy_first_mask"}
    for s in summary["scores"].values():
        assert 0.0 <= s["J&F"] <= 1.0
    assert (work / "loss_curve.png").stat().st_size > 0
    for name in ("sav", "sa1b"):  # both training datasets went through their TFDS builders
        assert (work / "tfds" / name / "1.0.0" / "prepare_report.json").exists()
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"train_video/loss", "train_image/loss"} <= set().union(*rows)
    assert len(summary["gifs"]) == 2
    held_out = work / "raw" / "sav_val" / "Annotations_6fps"
    assert [len(list(v.iterdir())) for v in sorted(held_out.iterdir())] == [2, 2]  # --objects
    assert "--distractors 0" in (work / "raw" / "train.done").read_text()
    assert all(Image.open(g).n_frames == 16 for g in summary["gifs"])
    assert (work / "run" / "checkpoints" / "2").is_dir()
    out = capsys.readouterr().out
    assert "copy_first_mask" in out and "target: trained J&F" in out

    # a rerun finds the data, the prepared dataset and the finished training, and redoes only
    # the evaluation; a 2-step model misses the targets, which --require_targets turns into 1
    assert not summary["targets"]["met_jf"]
    assert demo.main(argv + ["--require_targets"]) == 1
    out = capsys.readouterr().out
    assert "already prepared" in out and "restored step 2" in out
    assert sorted(p.name for p in (work / "run" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2"]
    again = json.loads((work / "summary.json").read_text())
    assert again["scores"]["trained"]["J&F"] == pytest.approx(summary["scores"]["trained"]["J&F"])
