#!/usr/bin/env python
"""Probe whether the click-prompt (SA-1B image step) training path learns at all.

    python scripts/probe_click_training.py [--corrections 7] [--steps 60]

The `tiny` model cut to one block per stage (as the train-step tests), trained with the real
train step on one fixed batch of 8 single-frame images, each with 2 visible 30 x 40 boxes
(one padded object slot), prompted with a click and `--corrections` correction clicks, SAM 2's
image step. Prints the IoU of the picked mask (`iou`), of the supervised best mask
(`best_iou`) and the loss terms every 10 steps. A path that trains climbs from ~0.01 to well
above 0.5 within --steps; docs/benchmarks.md ("Probes of the seventh session") has the
figures and why the demo's image steps still learn nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# one block per stage: XLA:CPU compiles a train step in seconds instead of minutes
MICRO = {"vit.depth": 2, "vit.global_att_blocks": (1,), "memory_attention.num_layers": 1,
         "mask_decoder.transformer_depth": 1, "memory_encoder.fuser_layers": 1}
PRINTED = ("loss", "iou", "best_iou", "loss_mask", "loss_dice", "loss_class")


def box_batch(b: int, size: int, objects: int = 2, seed: int = 0) -> dict:
    """b single-frame images (uint8 noise) with `objects` filled 30 x 40 boxes each, their
    masks (B, 1, O, S, S) and obj_valid (B, O) with the second slot of image 0 padded."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(b, 1, size, size, 3), dtype=np.uint8)
    masks = np.zeros((b, 1, objects, size, size), bool)
    for i in range(b):
        for k in range(objects):
            y, x = 10 + 30 * k + i, 20 + 3 * i
            masks[i, 0, k, y:y + 30, x:x + 40] = True
            images[i, 0, y:y + 30, x:x + 40] = (200, 40 * k, 90)  # the object is visible
    valid = np.ones((b, objects), bool)
    valid[0, 1] = False
    return {"images": images, "masks": masks, "obj_valid": valid}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--corrections", type=int, default=0, help="correction clicks per image")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from tam_jax import configs
    from tam_jax.models.tam import init_params
    from tam_jax.training import optimizer, prompts
    from tam_jax.training.train_step import StepConfig, create_train_state, make_train_step

    kind = prompts.PlanKind(point_input=True, init_prompts=("click",),
                            corrections=args.corrections)
    model_cfg = configs.for_training(configs.override(configs.get_config("tiny"), MICRO))
    opt_cfg = optimizer.OptimizerConfig(lr=args.lr, lr_image_encoder=args.lr,
                                        schedule="constant", warmup_steps=0,
                                        total_steps=args.steps, clip_norm=1.0, layer_decay=1.0)
    params = init_params(model_cfg, 0)
    opt = optimizer.make_optimizer(opt_cfg, params, model_cfg)
    step = jax.jit(make_train_step(StepConfig(model=model_cfg, optimizer=opt_cfg,
                                              dropout=False), opt, kind))
    state = create_train_state(params, opt, seed=0)
    batch = jax.tree.map(jnp.asarray, box_batch(8, model_cfg.image_size))
    order, corrected = jnp.asarray([0], jnp.int32), jnp.asarray([True])
    for i in range(args.steps):
        state, m = step(state, batch, order, corrected)
        if i % 10 == 0 or i == args.steps - 1:
            print(f"step {i:4d} " + " ".join(f"{k} {float(m[k]):.3f}" for k in PRINTED),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
