"""From an experiment config and a mesh to the jitted, sharded train step.

    setup = build(config, mesh)
    step = setup.jit(kind)                        # one per prompt-plan kind
    state = setup.create_state()                  # already sharded
    batch = setup.abstract_batch(per_device=1)    # ShapeDtypeStructs, for lowering ahead of time

One code path for the trainer (`trainer.train`) and for ahead-of-time compilation on a TPU
topology from a CPU host (`scripts/tpu_plan.py`): whatever the planner compiles is exactly what
the trainer would run, the same shardings, plan kinds and donation.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tam_jax import configs, sharding
from tam_jax.models.tam import init_params, logical_axes
from tam_jax.training import losses, optimizer, prompts
from tam_jax.training.train_step import StepConfig, TrainState, create_train_state, make_train_step


def dataclass_from(cls, section) -> object:
    """A frozen config dataclass from a ConfigDict section (unknown keys are an error)."""
    values = dict(section) if section is not None else {}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        raise KeyError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def inference_model_config(config, remat: bool = False) -> configs.EfficientTAMConfig:
    """The config's model as the predictors run it: variant + overrides ((dotted key, value)
    pairs) + compute dtype, and the ViT remat policy only with `remat`."""
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in (config.model.get("overrides") or [])}
    overrides.setdefault("compute_dtype", config.model.get("compute_dtype", "float32"))
    if remat:
        overrides.setdefault("vit.remat", config.model.get("remat", "none"))
    return configs.override(configs.get_config(config.model.variant), overrides).validate()


def model_config(config) -> configs.EfficientTAMConfig:
    """The training-mode model config: `inference_model_config` with remat, in training mode
    (`configs.for_training`)."""
    return configs.for_training(inference_model_config(config, remat=True))


def step_config(config, model_cfg: configs.EfficientTAMConfig) -> StepConfig:
    """The `StepConfig` of `config.train` / `.optimizer` / `.prompts` / `.losses`."""
    tc = config.train
    return StepConfig(
        model=model_cfg, optimizer=dataclass_from(optimizer.OptimizerConfig, config.optimizer),
        prompts=dataclass_from(prompts.PromptConfig, config.get("prompts")),
        losses=dataclass_from(losses.LossConfig, config.get("losses")),
        cond_capacity=int(tc.get("cond_capacity", 2)),
        remat_frames=bool(tc.get("remat_frames", False)),
        memory_segments=int(tc.get("memory_segments", 0)), dropout=bool(tc.get("dropout", True)))


def clip_shape(config) -> tuple[int, int]:
    """(frames, objects) of the config's training clips (`data.clip`); an image source
    (T = 1, `data.image.max_masks` masks) is a separate shape, see `abstract_batch`."""
    from input_pipeline import sampling

    clip = dataclass_from(sampling.ClipConfig, config.data.get("clip"))
    return clip.num_frames, clip.max_objects


def plan_kinds(cfg: prompts.PromptConfig, num_frames: int) -> list[prompts.PlanKind]:
    """Every plan kind `prompts.sample_plan` can draw for clips of `num_frames` frames: the
    trainer compiles one step per kind it meets, so each must fit. Costliest first (most
    prompted frames, point input with correction clicks)."""
    if num_frames == 1:
        return [prompts.PlanKind(True, (p,), cfg.num_correction_points) for p in ("click", "box")]
    n_max = min(cfg.num_init_cond_frames, num_frames)
    kinds = []
    for n in range(n_max, 0, -1):
        if cfg.prob_point_input > 0:
            choices = ("click", "box") if 0 < cfg.prob_box_input < 1 else (
                ("box",) if cfg.prob_box_input == 1 else ("click",))
            kinds += [prompts.PlanKind(True, p, cfg.num_correction_points)
                      for p in itertools.product(choices, repeat=n)]
        if cfg.prob_point_input < 1:
            kinds.append(prompts.PlanKind(False, ("mask",) * n, 0))
    return kinds


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """The pieces of a sharded train step (see the module docstring)."""

    model: configs.EfficientTAMConfig
    step: StepConfig
    opt: optax.GradientTransformation
    mesh: Mesh
    preset: str
    seed: int
    abstract_state: TrainState
    state_shardings: TrainState
    batch_sharding: NamedSharding
    replicated: NamedSharding
    logical: Any

    def fresh_state(self) -> TrainState:
        """A new state (unsharded; see `create_state`)."""
        return create_train_state(init_params(self.model, self.seed), self.opt, self.seed)

    def create_state(self) -> TrainState:
        return jax.jit(self.fresh_state, out_shardings=self.state_shardings)()

    def jit(self, kind: prompts.PlanKind):
        """The step for one plan kind, jitted with the state / batch shardings, state donated:
        (state, batch, order, corrected) -> (state, metrics)."""
        rep = self.replicated
        return jax.jit(make_train_step(self.step, self.opt, kind),
                       in_shardings=(self.state_shardings, self.batch_sharding, rep, rep),
                       out_shardings=(self.state_shardings, rep), donate_argnums=0)

    def abstract_batch(self, global_batch: int, frames: int, objects: int,
                       packed_masks: bool = True) -> dict:
        """The pipeline's batch as sharded ShapeDtypeStructs: images uint8 (B, T, S, S, 3),
        masks (B, T, O, S, S / 8) uint8 bit-packed (the pipeline's default) or bool
        (B, T, O, S, S), obj_valid bool (B, O)."""
        s, sh = self.model.image_size, self.batch_sharding
        masks = ((global_batch, frames, objects, s, -(-s // 8)), jnp.uint8) if packed_masks \
            else ((global_batch, frames, objects, s, s), jnp.bool_)
        return {"images": jax.ShapeDtypeStruct((global_batch, frames, s, s, 3), jnp.uint8,
                                               sharding=sh),
                "masks": jax.ShapeDtypeStruct(*masks, sharding=sh),
                "obj_valid": jax.ShapeDtypeStruct((global_batch, objects), jnp.bool_,
                                                  sharding=sh)}

    def abstract_args(self, global_batch: int, frames: int, objects: int,
                      packed_masks: bool = True) -> tuple:
        """(state, batch, order, corrected) as sharded ShapeDtypeStructs for `jit(kind).trace`."""
        rep = self.replicated
        plan = jax.ShapeDtypeStruct((frames,), jnp.int32, sharding=rep)
        return (sharding.with_shardings(self.abstract_state, self.state_shardings),
                self.abstract_batch(global_batch, frames, objects, packed_masks), plan,
                jax.ShapeDtypeStruct((frames,), jnp.bool_, sharding=rep))


def train_state_shardings(abstract_state: TrainState, logical: Any, mesh: Mesh,
                          preset: str) -> TrainState:
    """Shardings of a TrainState: params and optimiser state by the preset's rules, the step
    and the rng replicated."""
    rep = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        step=rep, rng=rep,
        params=sharding.param_shardings(abstract_state.params, logical, mesh, preset),
        opt_state=sharding.state_shardings(abstract_state.opt_state, abstract_state.params,
                                           logical, mesh, preset))


def build(config, mesh: Mesh) -> StepSetup:
    """The `StepSetup` of an experiment config on `mesh` (`config.sharding_preset`, default
    "dp"; `config.train.seed`)."""
    model_cfg = model_config(config)
    step_cfg = step_config(config, model_cfg)
    seed = int(config.train.seed)
    abstract_params = jax.eval_shape(lambda: init_params(model_cfg, seed))
    opt = optimizer.make_optimizer(step_cfg.optimizer, abstract_params, model_cfg)
    abstract_state = jax.eval_shape(
        lambda: create_train_state(init_params(model_cfg, seed), opt, seed))
    logical = logical_axes(model_cfg)
    preset = config.get("sharding_preset", "dp")
    rep = NamedSharding(mesh, PartitionSpec())
    state_sh = train_state_shardings(abstract_state, logical, mesh, preset)
    return StepSetup(model=model_cfg, step=step_cfg, opt=opt, mesh=mesh, preset=preset,
                     seed=seed, abstract_state=abstract_state, state_shardings=state_sh,
                     batch_sharding=sharding.batch_sharding(mesh), replicated=rep,
                     logical=logical)
