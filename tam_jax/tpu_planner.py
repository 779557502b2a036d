"""Capacity planning for Cloud TPU: which remat policy, sharding preset and per-chip batch of
an experiment config fit a topology's HBM, and what they cost. CLI: `scripts/tpu_plan.py`.

For a config, a topology ("v5e:16x16") and a number of slices:
  * `sources`: one batch shape per data source of the config: a video source gives clips
    (`data.clip`: frames x objects), an image source (SA-1B) single frames of
    `data.image.max_masks` masks; per-chip batch = the source's per-host batch / chips per host,
    or what the user asks.
  * `candidates`: (ViT remat, per-frame remat, sharding preset, fsdp degree) settings, cheapest
    first: the least recomputation, then the least communication.
  * `compile_train_case`: the config with one candidate applied is built exactly as the trainer
    builds it (`training.step_setup.build`: mesh, state / batch shardings, donation) over the
    topology's devices, traced for the costliest plan kind the prompt config can draw (most
    prompted frames, clicks with corrections), its FLOPs counted on the jaxpr
    (`tam_jax.flops`), and compiled by the real TPU compiler (`tam_jax.aot`).
  * `compile_track_case`: the inference `track_step` (the exported `track_frame`: image
    encoder + memory attention + heads + memory encoder, N objects) for one chip.
  * `derive`: per-chip step time bounds and what they imply (clips/s per chip, MFU bound).

Step time bounds: `ideal_s` = jaxpr FLOPs per chip / chip peak (bf16); the compiler's
`optimal_seconds` comes from XLA's cost model, which, like its FLOPs, counts a loop body once
(the frame scan, the attention's query chunks), so it undercounts a scanned step; the planner
reports the larger of the two as the bound. Neither is a measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any

from tam_jax import aot

# ViT block remat x per-frame remat, in order of recomputation (train_step FLOPs measured for S
# at 1024 in docs/benchmarks.md: 51.0 / 51.9 / 52.9 / 65.6 / 66.5 / 67.5 TFLOP per clip).
REMAT_ORDER = (("none", False), ("dots", False), ("full", False), ("none", True),
               ("dots", True), ("full", True))
# sharding presets in order of communication per step (tam_jax.sharding.PRESETS)
PRESET_ORDER = ("dp", "zero1", "fsdp")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One setting to try: ViT block remat ("none" / "dots" / "full"), per-frame remat of the
    tracking scan, sharding preset and mesh fsdp degree (1 for dp / zero1)."""

    remat: str
    remat_frames: bool
    preset: str
    fsdp: int

    def overrides(self) -> dict[str, Any]:
        """Dotted config keys (`scripts/train.py --set`) that select this setting."""
        return {"model.remat": self.remat, "train.remat_frames": self.remat_frames,
                "sharding_preset": self.preset, "mesh.data": -1, "mesh.fsdp": self.fsdp}

    @property
    def label(self) -> str:
        frames = "on" if self.remat_frames else "off"
        fsdp = f"x{self.fsdp}" if self.preset == "fsdp" else ""
        return f"remat {self.remat}/{frames}, {self.preset}{fsdp}"


@dataclasses.dataclass(frozen=True)
class Source:
    """One batch shape the trainer will compile: a data source of the config."""

    name: str
    image: bool
    frames: int
    objects: int
    per_chip: int


def candidates(remats=("none", "dots", "full"), remat_frames=(False, True),
               presets=PRESET_ORDER, fsdp: int = 1) -> list[Candidate]:
    """Every requested setting, cheapest first (recomputation, then communication)."""
    out = []
    for remat, frames in REMAT_ORDER:
        if remat not in remats or frames not in remat_frames:
            continue
        for preset in PRESET_ORDER:
            if preset in presets:
                out.append(Candidate(remat, frames, preset, fsdp if preset == "fsdp" else 1))
    return out


def config_candidate(config) -> Candidate:
    """The setting the config itself asks for."""
    return Candidate(str(config.model.get("remat", "none")),
                     bool(config.train.get("remat_frames", False)),
                     str(config.get("sharding_preset", "dp")), int(config.mesh.get("fsdp", 1)))


def sources(config, chips_per_host: int, per_chip: int | None = None) -> list[Source]:
    """The config's data sources as batch shapes (see the module docstring). A per-host batch
    that does not split evenly over the host's chips is rounded up (at least one per chip)."""
    from input_pipeline import pipeline, sampling
    from tam_jax.training.step_setup import dataclass_from

    clip = dataclass_from(sampling.ClipConfig, config.data.get("clip"))
    image = dataclass_from(sampling.ImageConfig, config.data.get("image"))
    slices = int(config.data.get("host_slices", 1) or 1)
    out = []
    for s in config.data.sources:
        is_image = s["name"] in pipeline.IMAGE_DATASETS
        b = per_chip or max(1, math.ceil(int(s["batch_size"]) * slices / chips_per_host))
        out.append(Source(s["name"], is_image, 1 if is_image else clip.num_frames,
                          image.max_masks if is_image else clip.max_objects, b))
    return out


def with_candidate(config, cand: Candidate):
    """A copy of `config` with `cand` applied (a `vit.remat` model override gives way)."""
    import ml_collections

    cfg = copy.deepcopy(config)
    cfg.model.remat = cand.remat
    cfg.model.overrides = [(k, v) for k, v in (cfg.model.get("overrides") or [])
                           if k != "vit.remat"]
    cfg.train.remat_frames = cand.remat_frames
    cfg.sharding_preset = cand.preset
    cfg.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": cand.fsdp})
    return cfg


def compile_train_case(config, cand: Candidate, devices: list, source: Source,
                       all_kinds: bool = False, emit=None) -> dict:
    """Build, trace, count and compile the train step of `config` + `cand` for `source`'s
    batch over `devices` (compile-only TPU devices). `emit(partial_result)` is called after
    the FLOP count, before the compile (so a compile killed for time keeps its count).

    -> {"chips", "slices", "mesh", "global_batch", "kind", "flops_low", "flops_high",
        "trace_s", "lower_s", "compile_s", "memory", "cost" | "error"}; with `all_kinds`,
    "kinds": one {kind, memory, ...} per plan kind (the first is the costliest)."""
    from tam_jax import sharding
    from tam_jax.flops import count_flops
    from tam_jax.training import step_setup

    chip = aot.chip_spec(devices[0])
    cfg = with_candidate(config, cand)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=cand.fsdp), devices)
    setup = step_setup.build(cfg, mesh)
    kinds = step_setup.plan_kinds(setup.step.prompts, source.frames)
    global_b = source.per_chip * mesh.size
    res = {"chips": mesh.size, "slices": sharding.num_slices(devices),
           "mesh": dict(mesh.shape), "global_batch": global_b, "chip": chip.name,
           "hbm_gib": chip.hbm_gib, "peak_bf16_tflops": chip.peak_bf16_tflops}
    runs = []
    for kind in kinds if all_kinds else kinds[:1]:
        t0 = time.perf_counter()
        args = setup.abstract_args(global_b, source.frames, source.objects)
        traced = setup.jit(kind).trace(*args)
        run = {"kind": dataclasses.asdict(kind), **count_flops(traced),
               "trace_s": time.perf_counter() - t0}
        t0 = time.perf_counter()
        lowered = traced.lower()
        run["lower_s"] = time.perf_counter() - t0
        if emit is not None:
            emit({**res, **run})
        run.update(aot.compile_report(lowered, chip))
        runs.append(run)
    res.update(runs[0])
    if all_kinds:
        res["kinds"] = runs
    return res


def compile_track_case(config, device, num_objects: int, cond_capacity: int = 1) -> dict:
    """Compile the inference track step (`export.track_frame_fn`: one frame, `num_objects`
    objects, the full memory bank's shapes) for one chip; memory, FLOPs, cost."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    from tam_jax.export import bank_to_dict, track_frame_fn
    from tam_jax.flops import count_flops
    from tam_jax.memory import empty_bank
    from tam_jax.models.tam import init_params
    from tam_jax.training.step_setup import inference_model_config

    chip = aot.chip_spec(device)
    # the inference model: no training-mode flags (`configs.for_training`), no remat
    cfg = inference_model_config(config)
    sh = SingleDeviceSharding(device)
    spec = lambda tree: jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), tree)
    params = spec(jax.eval_shape(lambda: init_params(cfg, 0)))
    bank = spec(jax.eval_shape(lambda: bank_to_dict(empty_bank(cfg, num_objects,
                                                                cond_capacity))))
    s = cfg.image_size
    args = (params, bank, jax.ShapeDtypeStruct((s, s, 3), jnp.uint8, sharding=sh),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=sh),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=sh))
    t0 = time.perf_counter()
    traced = jax.jit(track_frame_fn(cfg)).trace(*args)
    res = {"chip": chip.name, "hbm_gib": chip.hbm_gib, "peak_bf16_tflops": chip.peak_bf16_tflops,
           "objects": num_objects, "image_size": s, **count_flops(traced),
           "trace_s": time.perf_counter() - t0}
    res.update(aot.compile_report(traced.lower(), chip))
    return res


# Input pipeline cost per CPU core, measured (docs/benchmarks.md, "Input pipeline", 2026-11-30):
# SA-V 49.4 frames/s (8-frame clips at 1024, SAM 2's augmentations), SA-1B 11.05 images/s as
# distributed (1500x2250, 64 masks; 14.18 when prepared with --max_side 1024). DAVIS-style
# folders are decoded like SA-V frames.
PIPELINE_FRAMES_PER_CORE_S = {"sav": 49.4, "davis": 49.4, "sa1b": 11.05}


def host_input_need(source: Source, items_per_s_per_chip: float, chips_per_host: int) -> dict:
    """What one host's input pipeline must deliver to keep its chips at the bound step time
    when every step draws from `source`: items/s and CPU cores at the measured per-core rate."""
    items = items_per_s_per_chip * chips_per_host
    rate = PIPELINE_FRAMES_PER_CORE_S.get(source.name)
    cores = items * source.frames / rate if rate else float("nan")
    return {"items_per_s": items, "cores": cores}


def fits(res: dict) -> bool | None:
    """True / False from a case's memory figures; None when unknown (no compile finished)."""
    mem = res.get("memory") or {}
    return mem.get("fits")


def hopeless_for_presets(res: dict) -> bool:
    """The compiler refused because the temporaries alone exceed HBM: no sharding preset of
    the same remat setting can fix that (presets move parameters and optimiser state, which
    are arguments), so the planner skips them."""
    mem = res.get("memory") or {}
    return mem.get("fits") is False and "temp" in mem and "argument" not in mem


def derive(res: dict, per_chip: int) -> dict:
    """Per-chip FLOPs and the step-time bounds of a compiled case (module docstring):
    ideal_s, optimal_s (compiler), bound_s = max; items/s per chip = per_chip / bound_s;
    mfu_bound = FLOPs per chip / (bound_s x peak)."""
    out = {}
    if "flops_high" not in res:
        return out
    chips = res.get("chips", 1)
    per_chip_flops = res["flops_high"] / chips
    peak = res["peak_bf16_tflops"] * 1e12
    out["tflop_per_chip"] = per_chip_flops / 1e12
    out["ideal_s"] = per_chip_flops / peak
    optimal = (res.get("cost") or {}).get("optimal_seconds", float("nan"))
    # the cost model can return nonsense for large scanned programs (-508 s was seen for S at
    # 1024 on v5e): only a positive figure is used
    out["optimal_s"] = optimal if math.isfinite(optimal) and optimal > 0 else float("nan")
    bound = max(out["ideal_s"], out["optimal_s"]) if math.isfinite(out["optimal_s"]) \
        else out["ideal_s"]
    out["bound_s"] = bound
    out["items_per_s_per_chip"] = per_chip / bound if bound > 0 else float("nan")
    out["mfu_bound"] = per_chip_flops / (bound * peak) if bound > 0 else float("nan")
    return out
