#!/usr/bin/env python
"""Probe how the demo model learns to track: train it and print each clip frame's IoU.

    python scripts/probe_demo_training.py --data_dir artifacts/demo/tfds --mode real \
        --steps 300 [--set data.sources.0.batch_size=16] [--set model.hidden_dim=128 ...]

The `make demo` config (experiments/demo.py, GT-mask prompt on frame 0), trained on one device
with the real train step, and every `--every` steps the IoU of each frame's final mask (the
IoU-head's pick, low resolution, thresholded at 0) on the step's batch, next to the loss terms,
the predicted foreground fraction, and the IoU that copying frame 0's ground truth would get
(the positional shortcut tracking must beat). The demo's SA-1B image steps are left out (one
plan kind: GT mask on frame 0). Frame 0 is the prompt (its IoU is the ceiling the low
resolution allows); frames 1.. are tracked through the memory. Modes:
  real     the data as it comes;
  static   every frame of a clip replaced by frame 0 (images and masks): tracking reduces to
           copying the prompt's mask through the memory;
  overfit  one batch, repeated: can the model fit it at all (capacity and gradient path);
  jitter   every frame after frame 0 shifted (wrapping around) by its own random offset of
           up to --jitter pixels, images and masks alike: copying in place no longer works,
           so the memory must be matched by appearance (as STM-style training on static
           images makes clips);
  curriculum  --static_steps static steps, then real ones.
This is how the demo's learning limits were diagnosed (docs/benchmarks.md, `make demo`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = "experiments/demo.py"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data_dir", default="artifacts/demo/tfds",
                   help="prepared SA-V (TFDS) of the demo (`make demo` writes it)")
    p.add_argument("--mode", default="real",
                   choices=("real", "static", "overfit", "jitter", "curriculum"))
    p.add_argument("--jitter", type=int, default=16,
                   help="jitter mode: largest per-frame shift in pixels")
    p.add_argument("--static_steps", type=int, default=100,
                   help="curriculum mode: this many static steps, then real ones")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=20, help="print every N steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as scripts/train.py --set")
    args = p.parse_args(argv)
    if not (Path(args.data_dir) / "sav").is_dir():
        raise SystemExit(f"--data_dir {args.data_dir}: no prepared sav dataset (run make demo)")

    import jax
    import jax.numpy as jnp
    import numpy as np

    from scripts.train import apply_overrides, load_config
    from tam_jax.models.tam import init_params
    from tam_jax.training import clip_forward, losses, optimizer, prompts, trainer
    from tam_jax.training.train_step import (
        StepConfig,
        _batch_for_model,
        create_train_state,
        make_train_step,
    )

    config = apply_overrides(load_config(CONFIG),
                             [f"data.sources.0.data_dir={args.data_dir}", "mesh.data=1",
                              *args.set])
    # the demo's video steps only (its SA-1B image steps are another plan kind)
    config.data.sources = [dict(config.data.sources[0], weight=1.0)]
    mcfg = trainer.model_config(config)
    data = iter(trainer.build_data(config, mcfg))
    ocfg = trainer._dataclass_from(optimizer.OptimizerConfig, config.optimizer)
    params = init_params(mcfg, int(config.train.seed))
    opt = optimizer.make_optimizer(ocfg, params, mcfg)
    pcfg = trainer._dataclass_from(prompts.PromptConfig, config.get("prompts"))
    lcfg = trainer._dataclass_from(losses.LossConfig, config.get("losses"))
    scfg = StepConfig(model=mcfg, optimizer=ocfg, prompts=pcfg, losses=lcfg, dropout=False)
    kind = prompts.PlanKind(False, ("mask",), 0)  # the demo's only plan: GT mask on frame 0
    step_fn = jax.jit(make_train_step(scfg, opt, kind), donate_argnums=0)
    state = create_train_state(params, opt, int(config.train.seed))

    @jax.jit
    def frame_iou(params, batch, order, corrected):
        """(T,) mean IoU over valid objects of each frame's final low-res mask; (T,) fg."""
        inp = _batch_for_model(scfg, batch)
        nobj = jnp.sum(inp["obj_valid"], dtype=jnp.float32)
        _, aux = clip_forward.clip_loss(mcfg, params, inp, kind, order, corrected,
                                        jax.random.key(0), nobj, prompt_cfg=pcfg,
                                        loss_cfg=lcfg, deterministic=True, return_frames=True)
        pred = aux["low_res_masks"][:, :, 0] > 0  # (T, N, h, w)
        t, n, h, w = pred.shape
        gt = inp["masks"]  # (B, T, O, S, S)
        s = gt.shape[-1]
        gt = gt[..., s // h // 2::s // h, s // w // 2::s // w]  # nearest downsample to (h, w)
        gt = jnp.moveaxis(gt, 1, 0).reshape(t, n, h, w)
        valid = inp["obj_valid"].reshape(n) & (gt.sum((-1, -2)) > 0)  # (T, N)
        inter = (pred & gt).sum((-1, -2))
        union = (pred | gt).sum((-1, -2))
        iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
        # the copy baseline: frame 0's ground truth as every frame's prediction
        c_inter = (gt[:1] & gt).sum((-1, -2))
        c_union = (gt[:1] | gt).sum((-1, -2))
        copy = jnp.where(c_union > 0, c_inter / jnp.maximum(c_union, 1), 1.0)

        def mean(x):
            return jnp.sum(x * valid, 1) / jnp.maximum(valid.sum(1), 1)

        return mean(iou), mean(copy), jnp.mean(pred, (1, 2, 3))

    frames = int(config.data.clip.num_frames)
    order = np.arange(frames, dtype=np.int32)
    corrected = np.zeros(frames, bool)
    fixed = {k: np.asarray(v) for k, v in next(data).items()} if args.mode == "overfit" else None
    jitter_rng = np.random.default_rng(0)
    t0 = time.time()
    print(f"mode {args.mode}, {args.steps} steps; columns per clip frame (frame 0 = the "
          "prompt): frame IoU, the copy-frame-0 baseline's IoU, predicted foreground fraction",
          flush=True)
    for step in range(args.steps):
        batch = fixed if fixed is not None else {k: np.asarray(v) for k, v in next(data).items()}
        if args.mode == "static" or (args.mode == "curriculum"
                                     and step < args.static_steps):
            batch = dict(batch)
            for key in ("images", "masks"):
                batch[key] = np.repeat(batch[key][:, :1], batch[key].shape[1], 1)
        if args.mode == "jitter":
            batch = dict(batch)
            images, masks = batch["images"].copy(), batch["masks"].copy()
            for b in range(images.shape[0]):
                for t in range(1, images.shape[1]):
                    dy, dx = jitter_rng.integers(-args.jitter, args.jitter, size=2,
                                                 endpoint=True)
                    images[b, t] = np.roll(images[b, t], (dy, dx), (0, 1))
                    masks[b, t] = np.roll(masks[b, t], (dy, dx), (1, 2))
            batch["images"], batch["masks"] = images, masks
        state, metrics = step_fn(state, batch, order, corrected)
        if step % args.every == 0 or step == args.steps - 1:
            iou, copy, fg = frame_iou(state.params, batch, order, corrected)
            m = jax.device_get(metrics)
            print(f"step {step} {time.time() - t0:.0f}s loss {m['loss']:.3f} "
                  f"dice {m['loss_dice']:.3f} obj_acc {m['obj_acc']:.2f} "
                  + (f"readout {m['loss_readout']:.3f} " if "loss_readout" in m else "")
                  + f"iou picked / best {m['iou']:.2f} / {m['best_iou']:.2f} "
                  f"frame_iou {np.round(np.asarray(iou), 3)} copy {np.round(np.asarray(copy), 3)} "
                  f"fg {np.round(np.asarray(fg), 3)}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
