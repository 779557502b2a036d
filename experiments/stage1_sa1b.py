"""Stage 1 of the EfficientTAM recipe: SAM-style image pre-training on SA-1B (no memory).

    python scripts/train.py --config experiments/stage1_sa1b.py:s --workdir DIR \
        --set data.sources.0.data_dir=/data/tfds

Paper (arXiv 2411.18933 §4, efficienttam_spec.md §12): 90k steps, global batch 256, AdamW
(0.9, 0.999), lr 4e-4, reciprocal-sqrt schedule with 1k warm-up and 5k cool-down, weight decay
0.1, layer-wise decay 0.8, no drop path, horizontal flip + 1024 resize, <= 64 masks per image,
focal : dice 20 : 1, bf16. The ViT starts from SAMI-pretrained weights (EfficientSAM; set
init_from to a converted checkpoint) and the batch is split over hosts: batch_size is per host
(256 / number of hosts).
"""

from experiments import common


def get_config(arg: str = "s"):
    c = common.base(common.variant(arg))
    c.data = common.data([{"name": "sa1b", "data_dir": "/data/tfds", "batch_size": 8,
                           "weight": 1.0}])
    c.optimizer = {"lr": 4e-4, "lr_image_encoder": None, "weight_decay": 0.1,
                   "layer_decay": 0.8, "clip_norm": 0.1, "schedule": "rsqrt",
                   "warmup_steps": 1_000, "cooldown_steps": 5_000, "total_steps": 90_000}
    c.train.num_steps = 90_000
    # One image of 64 masks per chip (global batch 256 on v5e-256): the SAM heads' 8 prompt
    # steps over 64 masks hold ~61 GiB for the gradient unless each step is rematerialised
    # (`train.remat_frames` covers the correction steps); the ViT's remat does not matter.
    # Measured with the TPU compiler by `scripts/tpu_plan.py` (docs/tpu.md, "Stage 1"):
    # 11.0 GiB (Ti) / 11.7 GiB (S) per v5e chip with this setting, dp.
    c.model.remat = "none"
    c.train.remat_frames = True
    c.sharding_preset = "dp"
    return c


def sweep():
    return [{"optimizer.layer_decay": d} for d in (0.7, 0.8, 0.9)]
