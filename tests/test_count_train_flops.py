"""scripts/count_train_flops.py: a config's train-step FLOPs per clip from a trace, no compile."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import count_train_flops  # noqa: E402


def test_sweep_of_memory_segments_counts_fewer_flops(tmp_path, capsys):
    out = tmp_path / "flops.json"
    assert count_train_flops.main([
        "--config", str(ROOT / "experiments/tiny_local.py") + ":micro", "--frames", "4",
        "--sweep", "train.memory_segments=0,3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["train.memory_segments=0",
                                            "train.memory_segments=3"]
    assert all(r["frames"] == 4 and r["objects"] == 2 for r in rows)
    # 3 tracked frames over 1, 2, 3 of the bank's 8 frame slots instead of 8 each
    assert 0 < rows[1]["flops_high"] < rows[0]["flops_high"]
    assert rows[0]["flops_low"] <= rows[0]["flops_high"]
    assert "| train.memory_segments=3 |" in capsys.readouterr().out


def test_bad_sweep_is_a_clear_error():
    with pytest.raises(SystemExit, match="--sweep"):
        count_train_flops.main(["--config", str(ROOT / "experiments/tiny_local.py"),
                                "--sweep", "train.memory_segments"])
