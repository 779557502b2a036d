"""scripts/sweep.py: run names, the unfinished-run commands, collect's table and plots, and a
local sweep end to end (train -> evaluate -> memory-attention cost -> table)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import sweep  # noqa: E402

POOLING = "experiments/ablations/memory_pooling.py"
CA = "model.memory_attention.cross_attention."


def test_run_names_spell_the_overrides():
    assert sweep.run_name({CA + "pool_window": 2, "optimizer.lr": 3e-4, "train.seed": 1,
                           "data.seed": 1}) == "pool_window=2,lr=0.0003,seed=1"
    assert sweep.run_name({"model.overrides": [("vit.depth", 2), ("num_maskmem", 3)]}) == \
        "depth=2,num_maskmem=3"
    assert sweep.run_name({"optimizer.freeze": ("image_encoder/trunk",)}) == \
        "freeze=image_encoder_trunk"
    assert sweep.run_name({}) == "base"


def _config_file(tmp_path, body: str) -> str:
    path = tmp_path / "exp.py"
    path.write_text("from experiments import tiny_local\n"
                    "def get_config(arg=''):\n    return tiny_local.get_config()\n" + body)
    return str(path)


def test_duplicate_names_filters_and_missing_functions(tmp_path):
    dup = _config_file(tmp_path, "def sweep():\n    return [{'a.lr': 1}, {'b.lr': 1}]\n")
    with pytest.raises(SystemExit, match="same name 'lr=1'"):
        sweep.named_runs(dup, local=False)
    runs = sweep.named_runs(POOLING, local=False, pattern=r"pool_window=4,.*pool_pointer_tokens"
                                                          r"=True,num_maskmem=3,image_size=512")
    assert len(runs) == 3 * 2  # 3 constants x 2 seeds
    assert len(sweep.named_runs(POOLING, local=True)) == 6
    (tmp_path / "bad.py").write_text("def get_config(arg=''):\n    return None\n")
    with pytest.raises(SystemExit, match="defines no sweep"):
        sweep.named_runs(str(tmp_path / "bad.py"), local=False)
    with pytest.raises(SystemExit, match="no such file"):
        sweep.named_runs(str(tmp_path / "nope.py"), local=False)


def test_commands_leave_out_finished_runs(tmp_path, capsys):
    root = tmp_path / "root"
    names = list(sweep.named_runs(POOLING, local=True))
    (root / names[0]).mkdir(parents=True)
    (root / names[0] / sweep.RESULTS).write_text("{}")
    (root / names[1]).mkdir()  # started, not finished
    assert sweep.main(["commands", "--config", POOLING, "--local", "--root", str(root),
                       "--set", "train.num_steps=3"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 5 and "5 of 6 runs left (1 finished)" in err
    assert all(line.startswith("python scripts/sweep.py one --config ") for line in lines)
    assert names[0] not in out and "--set train.num_steps=3" in lines[0]
    assert sweep.main(["list", "--config", POOLING, "--local", "--root", str(root)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["done", names[0]] and listing[1].split() == ["partial", names[1]]
    assert listing[2].split()[0] == "new"
    with pytest.raises(SystemExit, match="not in the sweep"):
        sweep.main(["one", "--config", POOLING, "--local", "--root", str(root), "--run", "x=1"])


def _fake_result(root: Path, name: str, jf: float, window: int, gflops: float, ms: float):
    (root / name).mkdir(parents=True)
    (root / name / sweep.RESULTS).write_text(json.dumps({
        "name": name, "overrides": {CA + "pool_window": window}, "steps": 40,
        "final_train_loss": 1.5, "scores": {"J&F": jf, "J": jf - 0.01, "F": jf + 0.01},
        "eval_frames_per_s": 20.0,
        "memory_attention": {"pool_window": window, "log_area_constant": "logits",
                             "pool_pointer_tokens": False, "attended_keys": 100 // window,
                             "xla_gflops": gflops, "analytic_gflops": gflops * 0.95,
                             "latency_ms": ms}}))


def test_collect_writes_csv_markdown_and_plots(tmp_path):
    root = tmp_path / "root"
    _fake_result(root, "pool_window=1", 0.70, 1, 0.60, 9.0)
    _fake_result(root, "pool_window=2", 0.69, 2, 0.24, 4.0)
    _fake_result(root, "pool_window=4", 0.66, 4, 0.15, 3.0)
    (root / "unfinished").mkdir()
    paths = sweep.collect(root)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["pool_window=1", "pool_window=2", "pool_window=4"]
    assert float(rows[1]["J&F"]) == pytest.approx(0.69)
    assert float(rows[2]["xla_gflops"]) == pytest.approx(0.15)
    assert "mIoU_1click" not in rows[0]  # columns nobody filled are left out
    md = paths["markdown"].read_text().splitlines()
    assert md[0].startswith("| name | J&F | J | F |") and len(md) == 2 + 3
    for key in ("jf_vs_flops.png", "jf_vs_latency.png"):
        assert paths[key].stat().st_size > 1000
    with pytest.raises(SystemExit, match="no finished runs"):
        sweep.collect(tmp_path / "empty")


MICRO = ["model.vit.depth=2", "model.vit.global_att_blocks=(1,)",
         "model.memory_attention.num_layers=1", "model.mask_decoder.transformer_depth=1",
         "model.memory_encoder.fuser_layers=1", "train.num_steps=3", "optimizer.total_steps=3",
         "optimizer.warmup_steps=0", "data.clip.num_frames=2",
         "eval.max_videos=2"]


def test_local_sweep_end_to_end(tmp_path, capsys):
    """One run of the local memory-pooling demo (window 2; micro model, 2-frame clips, 3 steps)
    through `run`: trained, evaluated and priced in its own process; the table has its row with
    J&F, FLOPs and latency, and a second pass has nothing left to do. (The whole demo sweep is
    run and recorded in docs/benchmarks.md: six runs take minutes each.)"""
    root = tmp_path / "sweep"
    argv = ["run", "--config", POOLING, "--local", "--local_data", str(tmp_path / "data"),
            "--root", str(root), "--filter", r"pool_window=2,log_area_constant=logits,"
            r"pool_pointer_tokens=False", "--parallel", "2", "--timing_repeats", "2"]
    for s in MICRO:
        argv += ["--set", s]
    assert sweep.main(argv) == 0, [p.read_text()[-3000:] for p in root.glob("*/log.txt")]
    with open(root / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["name"].startswith("pool_window=2,")
    row = rows[0]
    assert 0.0 <= float(row["J&F"]) <= 1.0 and int(row["steps"]) == 3
    assert float(row["xla_gflops"]) >= float(row["analytic_gflops"]) > 0
    assert float(row["latency_ms"]) > 0
    # 2 x 2 pooling of 7 frames x 64 tokens; the 64 pointer tokens stay
    assert int(row["attended_keys"]) == 7 * 16 + 64
    assert (root / "jf_vs_flops.png").exists() and (root / "jf_vs_latency.png").exists()
    info = json.loads((root / row["name"] / sweep.RUN_INFO).read_text())
    assert info["sets"] == MICRO and info["local"] is True
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert "0 of 1 runs to do" in capsys.readouterr().out
