"""The TPU capacity planner (`tam_jax.tpu_planner`, `scripts/tpu_plan.py`), the shared step
setup (`training.step_setup`) and ahead-of-time compilation for TPU topologies (`tam_jax.aot`).

The compile tests need libtpu, which `make test` installs into .venv/libtpu_site (`make
libtpu`): they compile the demo's micro config for a real v5e:2x2 with the TPU compiler on
this CPU machine, and a multi-slice mesh over two v5e:2x2 slices."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tam_jax import aot, tpu_planner
from tam_jax.training import prompts, step_setup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import tpu_plan  # noqa: E402
from scripts.train import load_config  # noqa: E402

needs_libtpu = pytest.mark.skipif(
    aot.libtpu_path() is None,
    reason="libtpu not installed (`make libtpu`; `make test` installs it)")


# ------------------------------------------------------------------------------------------
# Pieces that need no TPU compiler
# ------------------------------------------------------------------------------------------


def test_candidates_come_cheapest_first_and_filter():
    cands = tpu_planner.candidates(fsdp=8)
    assert len(cands) == 18
    assert cands[0] == tpu_planner.Candidate("none", False, "dp", 1)
    assert cands[-1] == tpu_planner.Candidate("full", True, "fsdp", 8)
    # recomputation first, then communication
    keys = [(tpu_planner.REMAT_ORDER.index((c.remat, c.remat_frames)),
             tpu_planner.PRESET_ORDER.index(c.preset)) for c in cands]
    assert keys == sorted(keys)
    few = tpu_planner.candidates(remats=("full",), remat_frames=(True,), presets=("fsdp",),
                                 fsdp=4)
    assert few == [tpu_planner.Candidate("full", True, "fsdp", 4)]


def test_sources_of_the_stage_configs():
    """Stage 2 mixes SA-V clips (8 frames x 3 objects) and SA-1B images (64 masks); 8 per host
    over the 8 chips of a v5e host is one per chip (global 256 on 256 chips: the paper's)."""
    config = load_config(str(ROOT / "experiments/stage2_video.py") + ":s")
    sav, sa1b = tpu_planner.sources(config, chips_per_host=8)
    assert (sav.name, sav.image, sav.frames, sav.objects, sav.per_chip) == ("sav", False, 8, 3, 1)
    assert (sa1b.name, sa1b.image, sa1b.frames, sa1b.objects) == ("sa1b", True, 1, 64)
    assert tpu_planner.sources(config, chips_per_host=4)[0].per_chip == 2
    assert tpu_planner.sources(config, 8, per_chip=3)[1].per_chip == 3
    stage1 = load_config(str(ROOT / "experiments/stage1_sa1b.py") + ":ti")
    (only,) = tpu_planner.sources(stage1, chips_per_host=8)
    assert only.image and only.frames == 1


def test_with_candidate_sets_what_the_trainer_reads():
    config = load_config(str(ROOT / "experiments/stage2_video.py") + ":s")
    config.model.overrides = [("vit.remat", "full"), ("num_maskmem", 3)]
    before = tpu_planner.config_candidate(config)
    cand = tpu_planner.Candidate("dots", False, "zero1", 1)
    assert cand != before
    cfg = tpu_planner.with_candidate(config, cand)
    assert tpu_planner.config_candidate(cfg) == cand
    model = step_setup.model_config(cfg)
    assert model.vit.remat == "dots" and model.num_maskmem == 3  # the override gave way
    assert not step_setup.step_config(cfg, model).remat_frames
    assert tpu_planner.config_candidate(config) == before  # the original is untouched


def test_plan_kinds_cover_what_sample_plan_draws():
    import numpy as np

    cfg = prompts.PromptConfig()
    kinds = step_setup.plan_kinds(cfg, 8)
    rng = np.random.default_rng(0)
    drawn = {prompts.sample_plan(cfg, 8, rng).kind for _ in range(2000)}
    assert drawn == set(kinds)
    first = kinds[0]  # the costliest: most prompted frames, point input with corrections
    assert first.point_input and first.num_init_cond == 2 and first.corrections == 7
    img = step_setup.plan_kinds(cfg, 1)
    assert {prompts.sample_plan(cfg, 1, rng).kind for _ in range(200)} == set(img)
    mask_only = step_setup.plan_kinds(dataclasses.replace(cfg, prob_point_input=0.0), 8)
    assert all(not k.point_input for k in mask_only) and len(mask_only) == 2


def test_derive_bounds_and_mfu():
    res = {"chips": 4, "flops_high": 4 * 197e12 * 0.5, "peak_bf16_tflops": 197.0,
           "cost": {"optimal_seconds": 0.25}}
    d = tpu_planner.derive(res, per_chip=2)
    assert d["ideal_s"] == pytest.approx(0.5) and d["bound_s"] == pytest.approx(0.5)
    assert d["items_per_s_per_chip"] == pytest.approx(4.0) and d["mfu_bound"] == pytest.approx(1)
    res["cost"]["optimal_seconds"] = 1.0  # the compiler's estimate is the larger: it bounds
    d = tpu_planner.derive(res, per_chip=2)
    assert d["bound_s"] == 1.0 and d["mfu_bound"] == pytest.approx(0.5)
    res["cost"]["optimal_seconds"] = -508.5  # seen from the cost model: not a time
    d = tpu_planner.derive(res, per_chip=2)
    assert d["bound_s"] == pytest.approx(0.5) and d["optimal_s"] != d["optimal_s"]  # NaN
    assert tpu_planner.derive({"error": "x"}, 1) == {}


def test_hbm_refusals_and_presets():
    refused_temp = {"memory": aot.parse_hbm_error(
        "Ran out of memory in memory space hbm. HLO temporaries (21.45G) exceeds available HBM "
        "(15.75G)")}
    assert tpu_planner.fits(refused_temp) is False
    assert tpu_planner.hopeless_for_presets(refused_temp)
    refused_total = {"memory": aot.parse_hbm_error("Used 17.0G of 15.75G hbm. Exceeded ...")}
    assert not tpu_planner.hopeless_for_presets(refused_total)  # another preset may fit
    assert tpu_planner.fits({"error": "timed out"}) is None


def test_chip_table_and_topology_names():
    assert aot.chip_spec("v5e:16x16").hbm_gib == 16 and aot.chip_spec("v6e:8x8").hbm_gib == 32
    assert aot.chip_spec("v5p:4x4x4").hbm_gib == 95
    with pytest.raises(ValueError, match="unknown TPU generation"):
        aot.chip_spec("v9z:2x2")
    assert tpu_plan.topology_chips("v5e:16x16") == 256
    assert tpu_plan.topology_chips("v5p:4x4x4") == 64
    with pytest.raises(SystemExit, match="expected GEN"):
        tpu_plan.topology_chips("v5e")


def test_markdown_and_table_from_results():
    cand = tpu_planner.Candidate("full", True, "fsdp", 16)
    src = {"name": "sav", "image": False, "frames": 8, "objects": 3, "per_chip": 1}
    ok = {"memory": {"argument": 2**30, "output": 2**30, "alias": 2**30, "temp": 10 * 2**30,
                     "generated_code": 0, "total": 11 * 2**30, "fits": True},
          "compile_s": 300.0, "chips": 256}
    ok["derived"] = {"tflop_per_chip": 67.5, "ideal_s": 0.34, "optimal_s": 0.1, "bound_s": 0.34,
                     "items_per_s_per_chip": 2.9, "mfu_bound": 1.0}
    refused = {"memory": {"temp": 22 * 2**30, "capacity": 15.75 * 2**30, "fits": False},
               "derived": {}}
    out = {"chip": dataclasses.asdict(aot.CHIPS["v5e"]), "chips": 256, "chips_per_host": 8,
           "sources": [src],
           "config_setting": dataclasses.asdict(cand), "recommended": dataclasses.asdict(cand),
           "rows": [{"candidate": dataclasses.asdict(tpu_planner.Candidate("none", False, "dp",
                                                                           1)),
                     "label": "remat none/off, dp", "source": src, "result": refused},
                    {"candidate": dataclasses.asdict(cand), "label": cand.label, "source": src,
                     "result": ok}], "track": None}
    text = tpu_plan.markdown(out, "python scripts/tpu_plan.py ...")
    assert "| remat none/off, dp | sav | 1 | - | 22.00 | > 22.00 | 16 | NO |" in text
    assert "| **remat full/on, fsdpx16 (config)** | sav | 1 | 1.00 | 10.00 | 11.00 | 16 | yes" \
        in text
    assert "--set train.remat_frames=True" in text and "--set mesh.fsdp=16" in text
    assert "sav (8 frame(s) x 3 objects, 1 per chip)" in text


def test_libtpu_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(aot, "LIBTPU_PATHS", (str(tmp_path / "nowhere"),))
    monkeypatch.setattr(aot, "libtpu_path", lambda extra=None: None)
    with pytest.raises(RuntimeError, match="make libtpu"):
        aot.load_libtpu()


# ------------------------------------------------------------------------------------------
# The TPU compiler (libtpu), ahead of time
# ------------------------------------------------------------------------------------------


@needs_libtpu
def test_multi_slice_mesh_keeps_fsdp_inside_a_slice():
    """Two v5e:2x2 slices: 'data' spans the slices, every 'fsdp' row stays in one slice."""
    code = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tam_jax import aot, sharding
aot.load_libtpu()
devs = aot.topology_devices("v5e:2x2", slices=2)
mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=2), devs)
rows = [[d.slice_index for d in row] for row in mesh.devices]
try:
    sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=8), devs)
    err = None
except ValueError as e:
    err = str(e)
print("@@" + json.dumps({"n": len(devs), "shape": dict(mesh.shape), "rows": rows,
                         "slices": sharding.num_slices(devs), "err": err}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True,
                          text=True, timeout=300,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu",
                               "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
    line = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
    assert line, proc.stderr[-2000:]
    got = json.loads(line[0][2:])
    assert got["n"] == 8 and got["slices"] == 2 and got["shape"] == {"data": 4, "fsdp": 2}
    assert all(len(set(row)) == 1 for row in got["rows"])  # fsdp within a slice
    assert sorted({row[0] for row in got["rows"]}) == [0, 1]  # data across both
    assert "fsdp must divide a slice" in got["err"]


@needs_libtpu
@pytest.mark.slow  # two TPU compiles of the micro demo model: ~2-4 minutes on 2 cores
def test_planner_compiles_train_and_track_step_for_v5e(tmp_path):
    """The demo's micro config on v5e:2x2: the train step (built as the trainer builds it) and
    the inference track step compile; memory and cost figures are present and plausible."""
    out_json, out_md = tmp_path / "plan.json", tmp_path / "plan.md"
    rc = tpu_plan.main(["--config", str(ROOT / "experiments/demo.py") + ":micro",
                        "--sources", "sav", "--topology", "v5e:2x2", "--remats", "none",
                        "--remat_frames", "off",
                        "--presets", "fsdp", "--fsdp", "2", "--json", str(out_json),
                        "--markdown", str(out_md)])
    assert rc == 0
    out = json.loads(out_json.read_text())
    assert out["chips"] == 4 and out["chip"]["name"] == "v5e"
    (row,) = [r for r in out["rows"] if r["role"] == "search"]
    res = row["result"]
    assert "error" not in res, res.get("error")
    assert res["mesh"] == {"data": 2, "fsdp": 2} and res["global_batch"] == 4
    mem = res["memory"]
    assert mem["fits"] and 0 < mem["argument"] < 2**30 and mem["total"] >= mem["argument"]
    assert mem["alias"] > 0  # the state is donated, as in the trainer
    assert res["kind"]["point_input"] is False  # demo: GT-mask prompts only
    assert res["flops_high"] > 1e8 and res["cost"]["optimal_seconds"] > 0
    d = res["derived"]
    assert 0 < d["mfu_bound"] <= 1.0 and d["items_per_s_per_chip"] > 0
    # the demo config's own setting (dp, no remat) was compiled as well
    assert any(r["role"] == "config" and r["result"]["memory"]["fits"] for r in out["rows"])
    track = out["track"]
    assert "error" not in track, track.get("error")
    assert track["memory"]["fits"] and track["memory"]["argument"] > 0
    assert track["flops_high"] > 1e7 and track["cost"]["optimal_seconds"] > 0
    assert out["recommended"]["preset"] == "fsdp"
    text = out_md.read_text()
    assert "Recommended: remat none/off, fsdpx2" in text and "Inference track step" in text


def test_unknown_source_is_refused_before_any_compile():
    args = tpu_plan.parse_args(["--config", str(ROOT / "experiments/stage2_video.py") + ":s",
                                "--sources", "sav", "nope"])
    config = load_config(args.config)
    with pytest.raises(SystemExit, match=r"\['nope'\].*\['sav', 'sa1b'\]"):
        tpu_plan.plan(args, config, save=lambda out: None)
