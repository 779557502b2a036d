"""Fine-tune a released EfficientTAM on DAVIS-2017-style folders (DAVIS itself, or your videos).

    python scripts/prepare_data.py davis --manual_dir /data/DAVIS --data_dir /data/tfds \
        --heldout_list ImageSets/2017/val.txt
    python scripts/train.py --config experiments/finetune_davis.py:s --workdir DIR \
        --set init_from=/ckpt/efficienttam_s.pt --set data.sources.0.data_dir=/data/tfds

Argument: the variant ("s", "ti", "s_1", "ti_512", ... or a full variant name; default "s").
Start: `init_from` (default `/data/checkpoints/<variant>.pt`, which you will want to override)
is an official `.pt` (strictly converted) or a tam_jax model directory; params only: a fresh
optimiser state at step 0 (a restarted run continues from its workdir's own checkpoints).

Recipe: SAM 2's MOSE fine-tune values (efficienttam_spec.md §12, data_and_eval.md §3): AdamW,
lr 5e-6 outside the image encoder and 3e-6 inside it, layer-wise decay 0.9, cosine to lr / 10,
weight decay 0.1 (none on biases / norms), gradient clipping 0.1, 8-frame clips of <= 3 objects,
SAM 2's video augmentations and prompt simulation, bf16. No warm-up: a short run from trained
weights at an lr 60x below stage 2's.

Length (our choice): SAM 2 fine-tunes for 40 epochs, an epoch being one clip per training
video. DAVIS-2017 train has 60 videos, so 40 x 60 = 2400 clips = 300 steps at a global batch
of 8 (per-host batch 8 on one host; with H hosts divide the batch size by H). For N videos of
your own: --set train.num_steps=S --set optimizer.total_steps=S with S = ceil(40 * N / 8).

Frame rate: clips are 8 consecutive prepared frames. Prepared with --frame_stride 4, DAVIS's
24 fps becomes SA-V's 6 fps (the spacing the memory was trained on); the default stride 1
keeps every frame (clips 4x denser in time, 4x more frames to sample from).
"""

import math

from experiments import common

EPOCHS = 40
NUM_VIDEOS = 60  # DAVIS-2017 train
GLOBAL_BATCH = 8


def get_config(arg: str = "s"):
    model_variant = common.variant(arg)
    c = common.base(model_variant)
    c.init_from = f"/data/checkpoints/{model_variant}.pt"
    c.data = common.data([{"name": "davis", "data_dir": "/data/tfds",
                           "batch_size": GLOBAL_BATCH, "weight": 1.0, "split": "train"}])
    steps = math.ceil(EPOCHS * NUM_VIDEOS / GLOBAL_BATCH)
    c.optimizer = {"lr": 5e-6, "lr_image_encoder": 3e-6, "weight_decay": 0.1,
                   "layer_decay": 0.9, "clip_norm": 0.1, "schedule": "cosine",
                   "warmup_steps": 0, "total_steps": steps, "cosine_end_ratio": 0.1}
    c.train.num_steps = steps
    c.train.log_every = 10
    c.train.checkpoint_every = 100
    c.train.keep_every = None
    c.train.remat_frames = True
    return c


def sweep():
    """lr scale (x0.5, 1, 2 on both lrs) and a frozen ViT trunk at SAM 2's lrs."""
    out = [{"optimizer.lr": 5e-6 * s, "optimizer.lr_image_encoder": 3e-6 * s}
           for s in (0.5, 1.0, 2.0)]
    out.append({"optimizer.freeze": ("image_encoder/trunk",)})
    return out
