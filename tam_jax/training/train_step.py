"""One optimisation step: SAM 2's clip loss, its gradient, the AdamW update, the metrics.

    state = create_train_state(params, opt, seed)
    step = make_train_step(StepConfig(model_cfg, opt_cfg, ...), opt, kind)
    state, metrics = step(state, batch, order, corrected)

The step is a pure function of (state, global batch, plan arrays); the plan's static part
(`prompts.PlanKind`) is bound when the step is made, so a trainer keeps one compiled step per
kind. Everything random comes from `state.rng` folded with the step number: a run restored at
step k draws exactly what the uninterrupted run drew at step k.

A non-finite loss or gradient leaves the state unchanged (the update is dropped, `finite` is
False in the metrics) so that the trainer can stop with the step and the offending term and
the last checkpoint stays good.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from input_pipeline.device import model_images, unpack_masks
from tam_jax.configs import EfficientTAMConfig
from tam_jax.training import clip_forward, losses, prompts
from tam_jax.training.optimizer import OptimizerConfig, learning_rates


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: step (int32 scalar), params, optimiser state and
    the base rng as raw key data (uint32, so checkpoints hold a plain array)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(params, opt: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0 (jit it with out_shardings to create it already sharded)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)))


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What a train step computes (hashable: it is static under jit)."""

    model: EfficientTAMConfig  # in training mode: `configs.for_training`
    optimizer: OptimizerConfig
    prompts: prompts.PromptConfig = prompts.PromptConfig()
    losses: losses.LossConfig = losses.LossConfig()
    cond_capacity: int = 2  # conditioning memory slots (>= the plan's conditioning frames)
    remat_frames: bool = False  # rematerialise each tracked frame / correction step (backward)
    # tracked frames in this many scans, each attending only over the memory frames it can have
    # (clip_forward.frame_segments); 0: one scan over every bank slot, empty ones masked
    memory_segments: int = 0
    dropout: bool = True  # the memory attention's dropout (0.1 in the released config)


def _batch_for_model(cfg: StepConfig, batch: dict) -> dict:
    """Pipeline batch (uint8 images, bool or bit-packed masks) -> model inputs, on device."""
    dt = jnp.bfloat16 if cfg.model.compute_dtype == "bfloat16" else jnp.float32
    masks = batch["masks"]
    if masks.dtype == jnp.uint8:  # OutputConfig(pack_masks=True)
        masks = unpack_masks(masks, cfg.model.image_size)
    return {"images": model_images(batch["images"], dt), "masks": masks.astype(bool),
            "obj_valid": batch["obj_valid"].astype(bool)}


def make_train_step(cfg: StepConfig, opt: optax.GradientTransformation, kind: prompts.PlanKind):
    """The step function for one plan kind (not jitted: the trainer jits it with shardings).

    (state, batch, order (T,) int32, corrected (T,) bool) -> (state, metrics). batch: the
    pipeline's fields as global arrays (images uint8 (B, T, S, S, 3), masks (B, T, O, S, S),
    obj_valid (B, O)); metrics: float32 scalars.
    """

    def step(state: TrainState, batch: dict, order: jax.Array, corrected: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        inputs = _batch_for_model(cfg, batch)
        num_objects = jnp.sum(inputs["obj_valid"], dtype=jnp.float32)  # global batch

        def loss_fn(params):
            return clip_forward.clip_loss(
                cfg.model, params, inputs, kind, order, corrected, key, num_objects,
                prompt_cfg=cfg.prompts, loss_cfg=cfg.losses, cond_capacity=cfg.cond_capacity,
                deterministic=not cfg.dropout, remat_frames=cfg.remat_frames,
                memory_segments=cfg.memory_segments)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                                 for g in jax.tree.leaves(grads)))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # a non-finite step changes nothing (the trainer stops on `finite` = 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                                  opt_state=keep(opt_state, state.opt_state))
        readout = ("loss_readout",) if cfg.losses.weight_memory_readout > 0 else ()
        metrics = {"loss": loss, **{k: aux[k] for k in losses.TERMS + readout},
                   **losses.summarize_metrics(aux), "grad_norm": grad_norm,
                   "num_objects": num_objects, "finite": finite.astype(jnp.float32),
                   **learning_rates(cfg.optimizer, state.step)}
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return step
