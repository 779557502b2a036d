"""The trainer: config + workdir -> a trained, checkpointed EfficientTAM.

    python scripts/train.py --config experiments/tiny_local.py --workdir /tmp/run

Reads top to bottom in phases: mesh, model and optimiser with their sharding, data, restore,
step, loop. The config is an `ml_collections.ConfigDict` (see `experiments/`); `train` never parses
flags. Every host runs this same function (multi-host: `config.multihost` calls
`jax.distributed.initialize()` first, with the TPU runtime's or the environment's settings).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from tam_jax import checkpointing, sharding, storage
from tam_jax.training import losses, optimizer, prompts, step_setup
from tam_jax.training.train_step import TrainState

log = logging.getLogger("tam_jax.train")


class TrainingDiverged(RuntimeError):
    """A step produced a non-finite loss or gradient (its update was dropped)."""


# The config -> step helpers live in step_setup (shared with the TPU planner); these names stay
# importable from here.
_dataclass_from = step_setup.dataclass_from
model_config = step_setup.model_config


def write_model_description(config, workdir) -> Path:
    """`<workdir>/model.json`: {"variant", "overrides"} of the trained model, so that
    evaluation (`evaluation.weights.load_eval_model`) rebuilds it from the workdir alone.
    `workdir`: a `storage.as_path` path (local or gs://)."""
    desc = {"variant": config.model.variant,
            "overrides": [[k, list(v) if isinstance(v, tuple) else v]
                          for k, v in (config.model.get("overrides") or [])]}
    path = workdir / checkpointing.MODEL_FILE
    storage.write_text_atomic(path, json.dumps(desc, indent=1) + "\n")  # never half-written
    return path


def _concat_batches(batches: tuple[dict, ...]) -> dict:
    """Batches of consecutive host slices -> one batch (leading axes concatenated in order)."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def build_data(config, model_cfg, process_index=None, process_count=None):
    """The host's Grain batch stream (input_pipeline.pipeline) from `config.data`.

    `config.data.host_slices` = K (default 1) makes each of the P processes read the slices of
    K consecutive virtual hosts (process i: hosts i*K .. i*K+K-1 of P*K) and concatenate their
    batches, so the per-host batch is K x the sources' batch sizes and the global batches are
    exactly those of a run on P*K hosts (checkpointed as one Grain iterator): fewer hosts
    replay a multi-host run's data (tests/test_train_processes.py: one process, two slices)."""
    from input_pipeline import augment, pipeline, sampling

    d = config.data
    video_aug = None
    if d.get("video_aug") is not None:  # AugmentConfig fields; the resolution is the model's
        video_aug = _dataclass_from(augment.AugmentConfig,
                                    {**dict(d.video_aug), "resolution": model_cfg.image_size})
    specs = [pipeline.SourceSpec(s["name"], s["data_dir"], int(s["batch_size"]),
                                 float(s.get("weight", 1.0)), s.get("split", "train"))
             for s in d.sources]
    cfg = pipeline.PipelineConfig(
        resolution=model_cfg.image_size, seed=int(d.get("seed", 0)),
        clip=_dataclass_from(sampling.ClipConfig, d.get("clip")),
        image=_dataclass_from(sampling.ImageConfig, d.get("image")), video_aug=video_aug,
        num_workers=int(d.get("num_workers", 0)), num_threads=int(d.get("num_threads", 2)),
        prefetch_buffer_size=int(d.get("prefetch_buffer_size", 4)))
    slices = int(d.get("host_slices", 1) or 1)
    if slices == 1:
        return pipeline.build(specs, cfg, process_index, process_count)
    import grain

    if process_index is None or process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    hosts = [pipeline.build_map_dataset(specs, cfg, process_index * slices + k,
                                        process_count * slices) for k in range(slices)]
    ds = grain.experimental.ZipMapDataset(hosts).map(_concat_batches).to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.num_threads,
                          prefetch_buffer_size=cfg.prefetch_buffer_size))
    if cfg.num_workers > 0:
        pipeline._allow_worker_processes()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
    return ds


class _MetricWindow:
    """Means of the step metrics since the last logged row, so that a row describes every
    step it stands for: a mixture of image and video batches would otherwise log whichever
    kind the logged step happened to draw (with 0.7 / 0.3 weights, every 20th step drew
    SA-1B). Rows carry `train/<metric>` over all steps and, when the config mixes image and
    video datasets, `train_video/<metric>` and `train_image/<metric>` for the loss terms and
    IoU metrics of each kind (absent when the window had no batch of that kind). A resumed
    run's first window starts at its restored step."""

    PER_KIND = ("loss", *losses.TERMS, "loss_readout", "iou", "best_iou", "obj_acc")

    def __init__(self, config):
        from input_pipeline.pipeline import IMAGE_DATASETS, VIDEO_DATASETS

        names = {s["name"] for s in config.data.sources}
        self.mixed = bool(names & set(VIDEO_DATASETS)) and bool(names & set(IMAGE_DATASETS))
        self.sums: dict[str, list[float]] = {}

    def add(self, metrics: dict, num_frames: int) -> None:
        kind = "video" if num_frames > 1 else "image"
        for k, v in metrics.items():
            keys = [f"train/{k}"] + ([f"train_{kind}/{k}"] if self.mixed and
                                     k in self.PER_KIND else [])
            for key in keys:
                acc = self.sums.setdefault(key, [0.0, 0])
                acc[0] += float(v)
                acc[1] += 1

    def means(self) -> dict[str, float]:
        out = {k: total / n for k, (total, n) in self.sums.items()}
        self.sums = {}
        return out


class _MetricWriter:
    """TensorBoard event files (tensorboardX, no TensorFlow) and `metrics.jsonl` (one JSON
    object per logged step, easy to plot or compare), on process 0 only.

    In a gs:// workdir tensorboardX writes through google-cloud-storage and uploads its whole
    event file on each flush, so it is left to flush on its own timer (`flush_secs`), and
    `metrics.jsonl` is rewritten at most once a minute (`storage.JsonlLog`); locally both are
    flushed on every logged step."""

    def __init__(self, workdir, enabled: bool):
        self.writer = self.jsonl = None
        self._flush_each = not storage.is_url(workdir)
        if enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(workdir / "tensorboard"))
            self.jsonl = storage.JsonlLog(workdir / "metrics.jsonl")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
            if self._flush_each:
                self.writer.flush()
            self.jsonl.write(json.dumps({"step": step, **scalars}))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()
            self.writer = self.jsonl = None

    def __enter__(self) -> _MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also when training stops with an error: the lines so far are kept


def _report_compiled(compiled, kind, batch_shapes) -> float:
    """Print the compiled step's memory and FLOPs (per device); returns FLOPs per step."""
    flops = float("nan")
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        flops = float(cost.get("flops", float("nan")))
    except Exception as e:  # some backends do not report
        log.info("no cost analysis: %s", e)
    lines = [f"compiled train step for {kind} on batch {batch_shapes}: "
             f"{flops / 1e9:.2f} GFLOP per device per step"]
    try:
        mem = compiled.memory_analysis()
        gib = lambda n: f"{n / 2**30:.3f} GiB"
        lines.append(f"  memory per device: arguments {gib(mem.argument_size_in_bytes)}, "
                     f"outputs {gib(mem.output_size_in_bytes)}, temporaries "
                     f"{gib(mem.temp_size_in_bytes)}, code {gib(mem.generated_code_size_in_bytes)}")
    except Exception as e:
        log.info("no memory analysis: %s", e)
    print("\n".join(lines), flush=True)
    return flops


def initialize_distributed(settings=None) -> None:
    """`jax.distributed.initialize`: on TPU pods with no settings (the runtime provides them);
    elsewhere (CPU processes on one machine, the tests) from `settings` = {coordinator_address,
    num_processes, process_id[, local_device_ids]}. CPU processes exchange data over gloo."""
    settings = dict(settings or {})
    if jax.config.jax_platforms and "cpu" in jax.config.jax_platforms.split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(**settings)


def train(config, workdir: str | Path,
          eval_fn: Callable[[TrainState, int], dict[str, float]] | None = None) -> dict:
    """Run (or resume) training; returns the last logged metrics (host floats)."""
    workdir = storage.as_path(workdir)  # local, or gs:// (Orbax and tam_jax.storage write it)
    if not storage.is_url(workdir):  # object stores have no folders (and gcsfs's mkdir would
        workdir.mkdir(parents=True, exist_ok=True)  # create a mistyped bucket)
    tc = config.train

    # ---------------------------------------------------------------- mesh
    if config.get("multihost", False):
        initialize_distributed(config.get("distributed"))
    mesh = sharding.make_mesh(sharding.MeshConfig(**dict(config.mesh)))
    is_main = jax.process_index() == 0
    print(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices, "
          f"{jax.process_count()} process(es)", flush=True)

    # ---------------------------------------------------------------- model, optimiser, sharding
    setup = step_setup.build(config, mesh)
    model_cfg, step_cfg = setup.model, setup.step
    abstract_state, state_sh = setup.abstract_state, setup.state_shardings
    seed, preset, logical = setup.seed, setup.preset, setup.logical
    if is_main:
        print(optimizer.describe(abstract_state.params, model_cfg, step_cfg.optimizer),
              flush=True)
        print(sharding.describe_shardings(abstract_state.params, logical, mesh,
                                          abstract_state.opt_state, presets=(preset,)),
              flush=True)

    # ---------------------------------------------------------------- data
    data_it = iter(build_data(config, model_cfg))

    # ---------------------------------------------------------------- restore
    # Hosts arrive here apart (process 0 printed the tables): meet before Orbax's first
    # collective (see checkpointing.sync_processes).
    checkpointing.sync_processes("tam_jax_train_setup")
    ckpt = checkpointing.TrainCheckpointer(
        workdir, keep_last=tc.get("keep_last", 3), keep_every=tc.get("keep_every"),
        save_every=int(tc.checkpoint_every), async_save=bool(tc.get("async_checkpoints", True)))
    start = checkpointing.resolve_start(workdir, config.get("resume"), config.get("init_from"))
    if start.kind in ("workdir", "resume"):
        state = checkpointing.restore_train_state(
            start.path, sharding.with_shardings(abstract_state, state_sh), step=start.step,
            data_iterator=data_it)
        print(f"restored step {int(state.step)} from {start.path} ({start.kind})", flush=True)
    else:
        state = setup.create_state()
        if start.kind == "init_from":
            loaded = checkpointing.load_init_params(start.path, model_cfg)
            state = state.replace(params=jax.device_put(
                jax.tree.map(np.asarray, loaded), state_sh.params))
            print(f"initialised params from {start.path}", flush=True)

    # ---------------------------------------------------------------- step
    compiled_steps: dict[tuple, tuple[Callable, float]] = {}

    def run_step(kind, state, batch, order, corrected):
        """One compiled executable per (plan kind, batch shapes), compiled ahead of time on
        first use so that its memory and FLOPs are reported before it runs."""
        shapes = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
        if (kind, shapes) not in compiled_steps:
            compiled = setup.jit(kind).lower(state, batch, order, corrected).compile()
            report = {k: s for k, s, _ in shapes}
            compiled_steps[(kind, shapes)] = (compiled, _report_compiled(compiled, kind, report))
            # compile times differ between hosts (a persistent-cache hit on one): meet before
            # the step's first collectives
            checkpointing.sync_processes(f"tam_jax_compiled_{len(compiled_steps)}")
        compiled, flops = compiled_steps[(kind, shapes)]
        return compiled(state, batch, order, corrected), flops

    # ---------------------------------------------------------------- loop
    from tqdm import tqdm

    from input_pipeline.device import to_global

    num_steps, log_every = int(tc.num_steps), int(tc.get("log_every", 10))
    eval_every = int(tc.get("eval_every", 0) or 0)
    writer = _MetricWriter(workdir, enabled=is_main)
    if is_main:
        write_model_description(config, workdir)
    first = int(state.step)
    last_logged: dict = {}
    window = _MetricWindow(config)
    prompt_seed = int(config.get("prompt_seed", seed))
    t_prev = time.perf_counter()
    with writer, checkpointing.PreemptionGuard() as guard, tqdm(
            total=num_steps, initial=first, desc="train", disable=not is_main,
            dynamic_ncols=True) as bar:
        for step in range(first, num_steps):
            host_batch = next(data_it)
            num_frames = host_batch["images"].shape[1]
            plan = prompts.sample_plan(step_cfg.prompts, num_frames,
                                       prompts.plan_rng(prompt_seed, step))
            batch = to_global(host_batch, mesh, sharding.BATCH_AXES)
            (state, metrics), flops = run_step(plan.kind, state, batch, plan.order,
                                                plan.corrected)
            metrics = jax.device_get(metrics)  # one sync per step (the NaN guard needs it)
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            if metrics["finite"] != 1.0:
                bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
                ckpt.wait()
                raise TrainingDiverged(
                    f"step {step}: non-finite {', '.join(bad) or 'values'} (the update was "
                    f"dropped; the last checkpoint is step {ckpt.latest_step()}); loss terms "
                    + ", ".join(f"{k}={float(metrics[k]):.4g}" for k in losses.TERMS))
            bar.update(1)
            window.add(metrics, num_frames)
            if (step + 1) % log_every == 0 or step + 1 == num_steps or step == first:
                clips = host_batch["images"].shape[0] * jax.process_count()
                scalars = window.means()
                scalars |= {"perf/step_time_s": dt, "perf/clips_per_s": clips / dt,
                            "perf/flops_per_s_per_device": flops / dt}
                writer.write(step + 1, scalars)
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}",
                                iou=f"{scalars['train/iou']:.3f}", lr=f"{metrics['lr']:.2e}")
                last_logged = scalars
            ckpt.save(step + 1, state, data_it)
            if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
                writer.write(step + 1, {f"eval/{k}": float(v)
                                        for k, v in eval_fn(state, step + 1).items()})
            if guard.should_stop(step + 1):
                print(f"\npreemption requested: saving step {step + 1} and exiting", flush=True)
                ckpt.save(step + 1, state, data_it, force=True)
                break
    ckpt.save(int(state.step), state, data_it, force=True)
    ckpt.wait()
    ckpt.close()
    close = getattr(data_it, "close", None)
    if close is not None:
        close()
    return last_logged
