"""scripts/benchmark_input.py end to end on tiny data: it runs, its JSON holds every figure the
docs quote, and its decode ceiling and pipeline rates are positive, finite measurements."""

import json
import math

import pytest

pytest.importorskip("grain")
pytest.importorskip("cv2")


def test_benchmark_input_tiny(tmp_path):
    from scripts import benchmark

    out = tmp_path / "bench.json"
    rc = benchmark.main(["input", "--videos", "2", "--frames", "32", "--video-hw", "96", "128",
                         "--images", "2", "--image-hw", "200", "300", "--masks", "8",
                         "--max-masks", "8", "--repeats", "1", "--grain-batches", "1",
                         "--resolution", "128", "--workdir", str(tmp_path / "work"),
                         "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"sav", "sa1b", "sa1b_1024"}
    for name, r in data["results"].items():
        for key in ("pipeline_frames_per_s", "decode_frames_per_s",
                    "ratio_pipeline_over_decode", "read_s_per_item"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
    assert data["results"]["sa1b"]["objects_per_item_mean"] == 8  # overlapping masks: all used
    assert set(data["grain"]) == {"sav", "sa1b"}
    assert set(data["stage_breakdown"]) == {"sav", "sa1b", "sa1b_1024"}
    tpu = data["tpu_v5e_host_arithmetic"]
    assert tpu["assumptions"]["hosts"] == 32 and tpu["per_host_batch_per_step"] == 8
    # the prepared data is reused when the sizes match
    assert (tmp_path / "work" / "sizes.json").exists()
