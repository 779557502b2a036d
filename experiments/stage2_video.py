"""Stage 2 of the EfficientTAM recipe: the whole model (memory included) on SA-V + SA-1B.

    python scripts/train.py --config experiments/stage2_video.py:s_1 --workdir DIR \
        --set init_from=stage1/checkpoints

Paper (§4, efficienttam_spec.md §12): SA-V plus a 10 % subset of SA-1B (no other data), 300k
steps, global batch 256, AdamW, lr 6e-5 for the image encoder and 3e-4 for the rest, cosine
with 15k warm-up (to lr / 10, as SAM 2), weight decay 0.1, layer decay 0.8, 8-frame clips of <=
3 objects, <= 64 masks per image, SAM 2's video augmentations and prompt simulation, bf16.
Mixing weights: the paper's SA-V 70 % / SA-1B 15.2 % with its unavailable internal data left out
(0.822 / 0.178). Use a `_1` variant ("s_1", "ti_1") for the pooled memory attention.
"""

from experiments import common


def get_config(arg: str = "s_1"):
    c = common.base(common.variant(arg))
    c.data = common.data([
        {"name": "sav", "data_dir": "/data/tfds", "batch_size": 8, "weight": 0.822},
        {"name": "sa1b", "data_dir": "/data/tfds_sa1b_10pct", "batch_size": 8,
         "weight": 0.178}])
    c.optimizer = {"lr": 3e-4, "lr_image_encoder": 6e-5, "weight_decay": 0.1,
                   "layer_decay": 0.8, "clip_norm": 0.1, "schedule": "cosine",
                   "warmup_steps": 15_000, "total_steps": 300_000, "cosine_end_ratio": 0.1}
    c.train.num_steps = 300_000
    # Full ViT remat + per-frame remat, data parallel: S at 1024 (8 frames x 3 objects, one
    # clip per chip, the costliest prompt plan) needs 6.78 GiB per v5e chip on v5e:16x16, Ti
    # 6.79 (one memory scan), measured with the TPU compiler by scripts/tpu_plan.py
    # (docs/tpu.md, "Stage 2"); without remat it needs 38 GiB. 34 M parameters: dp
    # (replicated state) costs 0.4 GiB.
    c.model.remat = "full"
    c.train.remat_frames = True
    c.sharding_preset = "dp"
    # The tracked frames as 3 scans, each attending only over the memory frames it can hold
    # (`clip_forward.frame_segments`; same loss and gradients): the pooled s_1 step counts at
    # most 64.5 TFLOP per clip instead of 87.9, and needs 7.67 GiB per v5e chip (docs/tpu.md,
    # "Stage 2"); S 56.7 instead of 75.5 TFLOP at 7.35 GiB. The price: a longer TPU compile
    # (43 min for s_1 on a 2-core host). 0 = one scan over every slot.
    c.train.memory_segments = 3
    return c


def sweep():
    """Memory pooling at the paper's settings (Table 4): window 1 (full), 2, 4; constant on
    logits / keys (window 1 pools nothing: one run). The full ablation grid:
    experiments/ablations/memory_pooling.py."""
    ca = "model.memory_attention.cross_attention."
    settings = [(1, "logits")] + [(w, c) for w in (2, 4) for c in ("logits", "keys")]
    return [{ca + "pool_window": w, ca + "log_area_constant": c} for w, c in settings]
