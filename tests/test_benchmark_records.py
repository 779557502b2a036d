"""The benchmark suite's regression check (scripts/benchmark_records.py, scripts/benchmark.py):
figures named per subcommand, the records table read and appended, warnings past 10 %."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import benchmark
from scripts import benchmark_records as br

REPO = Path(__file__).resolve().parents[1]


def _side(ours_s, theirs_s):
    return {"tam_jax": {"median_s": ours_s}, "official": {"median_s": theirs_s},
            "ratio_tam_jax_over_official": ours_s / theirs_s}


TRACK = {"results": {"efficienttam_ti_512x512": {
    **_side(1.0, 0.8), "tam_jax_objects": {"1": {"median_s": 1.0}, "4": {"median_s": 3.3}}}}}
TRAIN = {"tpu": None, "cpu": {
    "config": {"variant": "efficienttam_ti", "resolution": 256, "batch": 1, "frames": 8,
               "objects": 3, "plan": "mask", "conv_impl": "matmul", "memory_segments": 0},
    "train_step": {"ratio_to_peak": 0.396, "median_s": 10.5}}}
INPUT = {"meta": {"sizes": {"resolution": 1024}},
         "results": {"sav": {"pipeline_frames_per_s": 49.4}, "sa1b": {"decode_only": 1.0}}}


def test_figures_of_each_subcommand():
    track = {f.key: f for f in br.figures_of("track", TRACK)}
    assert track["track efficienttam_ti_512x512 tam_jax"].value == pytest.approx(1000.0)
    assert track["track efficienttam_ti_512x512 ratio"].value == pytest.approx(1.25)
    assert track["track efficienttam_ti_512x512 tam_jax 4 objects"].value == pytest.approx(3300)
    assert "track efficienttam_ti_512x512 tam_jax 1 objects" not in track
    enc = br.figures_of("encoder", {"results": {"efficienttam_s": _side(2.0, 2.5)}})
    assert [(f.key, f.better) for f in enc] == [("encoder efficienttam_s tam_jax", "lower"),
                                              ("encoder efficienttam_s ratio", "lower")]
    train = br.figures_of("train-step", TRAIN)
    assert train[0].key == ("train-step cpu efficienttam_ti@256 b1 t8 o3 mask matmul seg0 "
                            "% of matmul peak")
    assert (train[0].value, train[0].better) == (pytest.approx(39.6), "higher")
    assert br.figures_of("train", {"tpu": {}, "cpu": None}) == []  # TPU-only run
    inp = br.figures_of("input", INPUT)
    assert [(f.key, f.value) for f in inp] == [("input sav@1024 pipeline per core", 49.4)]
    with pytest.raises(ValueError, match="no figures"):
        br.figures_of("nonsense", {})


def test_regressions_warn_past_ten_percent_in_the_right_direction():
    rec = {"t": br.Figure("t", 100.0, "ms", "lower", "2026-11-01"),
           "p": br.Figure("p", 40.0, "%", "higher", "2026-11-01")}
    assert br.regressions([br.Figure("t", 109.0, "ms", "lower")], rec) == []
    assert br.regressions([br.Figure("t", 80.0, "ms", "lower")], rec) == []  # faster
    (w,) = br.regressions([br.Figure("t", 111.0, "ms", "lower")], rec)
    assert "WARNING" in w and "t:" in w and "2026-11-01" in w and "+11.0 % worse" in w
    assert br.regressions([br.Figure("p", 36.5, "%", "higher")], rec) == []
    assert len(br.regressions([br.Figure("p", 35.0, "%", "higher")], rec)) == 1
    assert br.regressions([br.Figure("new key", 1e9, "ms", "lower")], rec) == []
    with pytest.raises(ValueError, match="better"):
        br.Figure("x", 1.0, "ms", "faster")


def test_records_round_trip_last_row_wins(tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\nsome prose\n")
    assert br.read_records(doc) == {}
    br.append_records(doc, [br.Figure("a", 1.5, "ms", "lower")], "cmd --x 0|3", "2026-11-01")
    br.append_records(doc, [br.Figure("a", 2.5, "ms", "lower"),
                            br.Figure("b", 40.0, "%", "higher")], "cmd2", "2026-11-02")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nsome prose\n\n" + br.RECORDS_HEADING)
    assert text.count(br.RECORDS_HEADING) == 1 and not list(tmp_path.glob("*.tmp"))
    rec = br.read_records(doc)
    assert rec["a"].value == 2.5 and rec["a"].date == "2026-11-02"
    assert rec["b"].better == "higher" and rec["b"].command == "cmd2"
    first = [ln for ln in text.splitlines() if ln.startswith("| 2026-11-01")][0]
    assert "cmd --x 0\\|3" in first  # a pipe in a command does not split the row


def test_bad_rows_and_misplaced_table_are_errors_naming_the_file(tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text(f"{br.RECORDS_HEADING}\n\n| date | key | value | unit | better | command |\n"
                   "|---|---|---:|---|---|---|\n| 2026-11-01 | a | fast | ms | lower | c |\n")
    with pytest.raises(ValueError, match=r"bench\.md:5: unreadable"):
        br.read_records(doc)
    doc.write_text(f"{br.RECORDS_HEADING}\n\n| 2026-11-01 | a | 1 | ms |\n")
    with pytest.raises(ValueError, match=r"bench\.md:3: a record row has 6 cells"):
        br.read_records(doc)
    doc.write_text(f"{br.RECORDS_HEADING}\n\n## Later section\n")
    with pytest.raises(ValueError, match="last section"):
        br.append_records(doc, [br.Figure("a", 1.0, "ms", "lower")], "c")


def test_the_project_records_table_is_readable():
    """docs/benchmarks.md's table parses and holds the figures the suite compares against."""
    rec = br.read_records(REPO / "docs" / "benchmarks.md")
    assert "track efficienttam_ti_512x512 ratio" in rec
    assert any(k.startswith("train-step cpu ") for k in rec)
    assert all(f.date and f.command.startswith("python scripts/") for f in rec.values())


def test_suite_prints_a_warning_and_records(tmp_path, monkeypatch, capsys):
    """`benchmark.py all` runs its five parts and checks each; --record appends."""
    doc = tmp_path / "bench.md"
    br.append_records(doc, [br.Figure("track efficienttam_ti_512x512 tam_jax", 800.0,
                                      "ms/frame", "lower")], "old", "2026-11-01")
    payloads = {"encoder": {"results": {"efficienttam_s": _side(2.0, 2.5)}}, "track": TRACK,
                "train-step": TRAIN, "input": INPUT,
                "matmul": {"meta": {"n": 64}, "square_gflops": {"float32": 90.0},
                           "attention_gflops": {}}}
    ran = []

    def fake_run_one(what, argv):
        ran.append((what, argv))
        path = tmp_path / f"{what}.json"
        path.write_text(json.dumps(payloads[what]))
        return 0, str(path)

    monkeypatch.setattr(benchmark, "run_one", fake_run_one)
    assert benchmark.main(["all", "--record", "--records", str(doc)]) == 0
    assert [w for w, _ in ran] == ["matmul", "encoder", "track", "train-step", "input"]
    assert ran[3][1] == ["--skip-tpu"]
    out = capsys.readouterr().out
    assert "WARNING: regression: track efficienttam_ti_512x512 tam_jax: 1000 ms/frame" in out
    assert "1 regression warning(s)" in out
    rec = br.read_records(doc)
    assert rec["track efficienttam_ti_512x512 tam_jax"].value == 1000.0  # the new last row
    assert "input sav@1024 pipeline per core" in rec
    assert rec["matmul 64^3 float32"].value == 90.0
    ran.clear()
    assert benchmark.main(["track", "--frames", "4", "--no-check", "--records", str(doc)]) == 0
    assert ran == [("track", ["--frames", "4"])]
    assert "against the last figures" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark.main(["all", "--frames", "4"])
    with pytest.raises(SystemExit):
        benchmark.main(["nope"])


@pytest.mark.slow  # builds the official Ti-512 and compiles our encoder: ~20 s on 2 cores
def test_encoder_benchmark_runs_both_sides():
    pytest.importorskip("torch")
    res = benchmark.bench_encoder("efficienttam_ti_512x512", repeats=1, warmup=0)
    for side in ("tam_jax", "official"):
        assert len(res[side]["samples_s"]) == 1 and res[side]["median_s"] > 0
    assert res["ratio_tam_jax_over_official"] == pytest.approx(
        res["tam_jax"]["median_s"] / res["official"]["median_s"])
    (enc_ms, ratio) = br.figures_of("encoder", {"results": {"ti": res}})
    assert enc_ms.value == pytest.approx(res["tam_jax"]["median_s"] * 1e3)


def test_track_benchmark_counts_frame_flops(tmp_path):
    """The track benchmark's FLOP ratio: the encoder is counted once per frame whatever the
    object count, the track step linearly in objects (every per-object matmul runs once per
    object; the few computed once per call, such as the pointers' temporal-position
    projection, are ~1e-4 of it), so 3 objects cost (E + 3P) / (E + P) in FLOPs."""
    from tam_jax.configs import get_config
    from tam_jax.models.tam import init_params
    from tam_jax.video_predictor import VideoPredictor

    cfg = get_config("tiny")
    pred = VideoPredictor(cfg, init_params(cfg, 0), progress=False)
    folder = tmp_path / "video"
    benchmark._write_jpeg_video(folder, 4, h=96, w=128)

    def run(n):
        state = pred.init_state(str(folder))
        for k in range(n):
            pred.add_new_points_or_box(state, 0, k, points=[[20.0 + 30 * k, 40.0]], labels=[1])
        for _ in pred.propagate_in_video(state):
            pass

    one, three = (benchmark._frame_gflop(pred, lambda n=n: run(n)) for n in (1, 3))
    assert one["encoder"] == three["encoder"] > 0
    assert three["track_step"] == pytest.approx(3 * one["track_step"], rel=1e-3)
    assert one["total"] == pytest.approx(one["encoder"] + one["track_step"])
    assert "_track_frame" not in vars(pred)  # the spies are gone: the jitted methods are back
    run(1)


def test_matmul_benchmark_runs_and_reports(tmp_path, capsys):
    """`benchmark.py matmul` (small n): every rate measured, its figures readable."""
    from scripts import benchmark_matmul

    out = tmp_path / "m.json"
    assert benchmark_matmul.main(["--n", "128", "--repeats", "1", "--objects", "1", "2",
                                  "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["square_gflops"]) == {"float32", "bf16 operands, float32 result",
                                            "bf16 operands, bf16 result"}
    assert len(result["attention_gflops"]) == 2 * 2 * 2  # objects x dtypes x batched / loop
    assert all(v > 0 for v in [*result["square_gflops"].values(),
                               *result["attention_gflops"].values()])
    figures = br.figures_of("matmul", result)
    assert [f.key for f in figures][0] == "matmul 128^3 float32"
    assert "2 objects, bfloat16" in capsys.readouterr().out
