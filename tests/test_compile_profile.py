# ruff: noqa: E501, W291  (the log and HLO lines below are verbatim, trailing space included)
"""tam_jax.compile_profile: the TPU compiler's log and HLO dump read into figures.

The log lines are libtpu 0.0.42.1's own (from a compile of this project's train step, stripped
of nothing but their neighbours); the HLO is a hand-made module in the dump's text format."""

import pytest

from tam_jax import compile_profile as cp

LOG = """\
I1129 22:12:28.475873    2412 hlo_pass_pipeline.cc:176] HLO pass: add-random-host-offloading time: 35 us (35 us) (cumulative: 35 us, max: 35 us, #called: 1)
I1129 22:12:28.494243    2412 hlo_pass_pipeline.cc:176] HLO pass: dce time: 4.62 ms (4617 us) (cumulative: 18.3 ms, max: 13.7 ms, #called: 3)
I1129 22:12:44.344076    2495 hlo_pass_pipeline.cc:181]   HLO pass tpu_fusion
I1129 22:12:46.622372    2495 hlo_pass_pipeline.cc:176] HLO pass: tpu_fusion time: 2.28 s (2278294 us) (cumulative: 24.7 s, max: 7.67 s, #called: 651)
I1129 22:12:50.494243    2412 hlo_pass_pipeline.cc:176] HLO pass: dce time: 1 ms (1000 us) (cumulative: 10.1 s, max: 1.87 s, #called: 369)
I1129 22:12:53.539243    2412 deepsea_compiler_hlo_passes.cc:6241] HLO_PASSES stage duration: 25.063516233s
W1129 22:15:23.403147    2499 lowering_emitter.cc:6105] Successful retry compilation of fusion.6082 after retry_count=7 
I1129 22:15:34.443992    2496 deepsea_compiler_base.cc:3931] BACKEND_PASSES stage duration: 2m40.4296909865s
I1129 22:15:44.525431    2496 deepsea_compiler_backend.cc:1773] final program bundle count: 1,382,852 note this count does not reflect cycles spent executing delays.
I1129 22:15:46.137083    2496 deepsea_compiler_backend.cc:1488] CODE_GENERATION stage duration: 11.682015104s
I1129 22:15:46.749839    2412 deepsea_compiler_base.cc:985] END_TO_END stage duration: 3m18.477176881s
"""

HLO = """\
HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_computation.1 (param_0.1: f32[4]) -> f32[4] {
  %param_0.1 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%param_0.1, %param_0.1)
}

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[]{:T(128)}, f32[4]{0:T(256)}) parameter(0)
  %fusion.2 = f32[4]{0} fusion(%gte.1), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(step)/jvp()/while/body/closed_call/EfficientTAM.condition_on_memory/memory_attention/layers_0/add"}
  %fusion.3 = f32[4]{0} fusion(%fusion.2), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(step)/transpose(jvp())/while/body/closed_call/EfficientTAM.sam_heads/EfficientTAM.prompt_and_decode/sam_mask_decoder/transformer/add"}
  ROOT %tuple.1 = (s32[]{:T(128)}, f32[4]{0:T(256)}) tuple(%c, %fusion.3)
}

ENTRY %main (a: f32[4]) -> f32[] {
  %a = f32[4]{0:T(256)} parameter(0)
  %all-gather.1 = f32[16]{0} all-gather(%a), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}
  %fusion.4 = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(step)/jvp(EfficientTAM.encode_image)/image_encoder/trunk/blocks_0/add"}
  %fusion.5 = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(step)/transpose(jvp(EfficientTAM.encode_image))/image_encoder/trunk/blocks_0/add"}
  %fusion.6 = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(step)/mul"}
  %while.7 = (s32[]{:T(128)}, f32[4]{0:T(256)}) while(%t), condition=%cond, body=%body
  ROOT %reduce.8 = f32[] reduce(%fusion.6, %z), dimensions={0}, to_apply=%sum
}
"""


def test_durations_in_libtpu_format():
    assert cp.parse_duration("2m40.4296909865s") == pytest.approx(160.4296909865)
    assert cp.parse_duration("34.78579299525s") == pytest.approx(34.78579299525)
    assert cp.parse_duration("1h2m3s") == pytest.approx(3723.0)
    assert cp.parse_duration("850ms") == pytest.approx(0.85)
    with pytest.raises(ValueError, match="not a duration"):
        cp.parse_duration("2 minutes")


def test_compiler_log_stages_passes_bundles_retries():
    got = cp.parse_compiler_log(LOG)
    assert got["stages_s"] == pytest.approx({"HLO_PASSES": 25.063516233,
                                             "BACKEND_PASSES": 160.4296909865,
                                             "CODE_GENERATION": 11.682015104,
                                             "END_TO_END": 198.477176881})
    # each pass's own times summed over its runs (the "cumulative" / "#called" figures are
    # the pipeline's running counters), slowest first
    assert list(got["hlo_passes_s"]) == ["tpu_fusion", "dce", "add-random-host-offloading"]
    assert got["hlo_passes_s"]["tpu_fusion"] == pytest.approx(2.278294)
    assert got["hlo_passes_s"]["dce"] == pytest.approx(0.005617)
    assert got["hlo_passes_s"]["add-random-host-offloading"] == pytest.approx(35e-6)
    assert got["hlo_pass_calls"] == {"add-random-host-offloading": 1, "dce": 2,
                                     "tpu_fusion": 1}
    assert got["bundles"] == 1_382_852
    assert got["retried_fusions"] == {"fusion.6082": 7}


def test_empty_log_gives_empty_figures():
    assert cp.parse_compiler_log("nothing here\n") == {
        "stages_s": {}, "hlo_passes_s": {}, "hlo_pass_calls": {}, "bundles": None,
        "retried_fusions": {}}


def test_hlo_census_counts_ops_parts_and_loop_fusions():
    got = cp.hlo_census(HLO)
    assert got["ops"] == {"fusion": 5, "while": 1, "all-gather": 1}
    # every instruction line: 2 in the fused computation, 4 in the body, 7 in the entry
    assert got["instructions"] == 13
    assert got["fusions_by_part"] == {
        "image encoder": {"forward": 1, "backward": 1},
        "memory attention": {"forward": 1},
        "mask decoder": {"backward": 1},
        "other": {"forward": 1}}
    assert got["fusions_in_loops"] == 2


def test_find_optimised_module_skips_cpu_dumps(tmp_path):
    (tmp_path / "module_0000.jit_step.cl_1.before_optimizations.txt").write_text("x")
    (tmp_path / "module_0001.jit_step.cpu_after_optimizations.txt").write_text("cpu" * 100)
    tpu = tmp_path / "module_0003.jit_step.cl_1.after_optimizations.txt"
    tpu.write_text("tpu")
    assert cp.find_optimised_module(tmp_path) == tpu
    with pytest.raises(FileNotFoundError, match="no optimised HLO of 'jit_other'"):
        cp.find_optimised_module(tmp_path, "jit_other")


def test_profile_env_appends_the_dump_to_existing_flags(tmp_path):
    env = cp.profile_env(tmp_path, "--xla_force_host_platform_device_count=8")
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 --xla_dump_to={tmp_path}"
    assert env["TPU_VMODULE"] == "hlo_pass_pipeline=1"


@pytest.mark.slow  # one TPU compile of a micro train step: a few minutes on 2 cores
def test_profile_tpu_compile_script_on_a_tiny_step(tmp_path):
    """The script end to end: libtpu's log is read (stages, bundles) and the dumped optimised
    program is counted (fusions per model part, the frame scan kept as loops)."""
    import json
    import sys
    from pathlib import Path

    from tam_jax import aot

    if aot.libtpu_path() is None:
        pytest.skip("libtpu is not importable: no ahead-of-time TPU compile here")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scripts import profile_tpu_compile

    out = tmp_path / "profile.json"
    dump = tmp_path / "dump"
    rc = profile_tpu_compile.main(["--micro", "--variant", "tiny", "--resolution", "128",
                                   "--frames", "4", "--objects", "2", "--preset", "dp",
                                   "--keep-dump", str(dump), "--json", str(out)])
    res = json.loads(out.read_text())["result"]
    assert rc == 0 and "error" not in res, res.get("error")
    stages = res["stages_s"]
    assert {"HLO_PASSES", "BACKEND_PASSES", "END_TO_END"} <= set(stages)
    assert 0 < stages["BACKEND_PASSES"] < stages["END_TO_END"] <= res["compile_s"] + 1
    assert res["bundles"] > 0 and len(res["hlo_passes_s"]) > 20
    census = res["census"]
    assert census["ops"]["fusion"] > 100 and census["ops"]["while"] == 2  # scan fwd + grad
    assert census["fusions_in_loops"] > 0
    assert {"image encoder", "mask decoder", "memory attention", "other"} <= set(
        census["fusions_by_part"])
    assert sum(sum(v.values()) for v in census["fusions_by_part"].values()) == \
        census["ops"]["fusion"]
    assert any(dump.glob("*jit_step*after_optimizations.txt"))  # --keep-dump kept it
