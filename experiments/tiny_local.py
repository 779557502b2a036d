"""A tiny EfficientTAM trained on this CPU, end to end through the real trainer.

    python scripts/make_synthetic_data.py --out /tmp/syn
    python scripts/prepare_data.py sav --manual_dir /tmp/syn/sav --data_dir /tmp/tfds
    python scripts/train.py --config experiments/tiny_local.py --workdir /tmp/run \
        --set data.sources.0.data_dir=/tmp/tfds

The `tiny` test variant cut to one block per stage (XLA's CPU compile time grows with the
number of ops), 128 px, 2-frame clips of up to 2 objects, GT-mask prompts only (one plan kind,
so one compile), float32, no remat. Argument: "micro" (default) or "tiny" (the full tiny
variant).
"""

import ml_collections

from experiments import common

# model overrides as (dotted key, value) pairs (ConfigDict keys cannot hold dots)
MICRO = [("vit.depth", 2), ("vit.global_att_blocks", (1,)), ("memory_attention.num_layers", 1),
         ("mask_decoder.transformer_depth", 1), ("memory_encoder.fuser_layers", 1)]


def get_config(arg: str = "micro"):
    c = common.base("tiny")
    c.model.compute_dtype = "float32"
    c.model.remat = "none"
    c.model.overrides = MICRO if arg == "micro" else []
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    c.sharding_preset = "dp"
    c.data = common.data([{"name": "sav", "data_dir": "/tmp/tfds", "batch_size": 2,
                           "weight": 1.0}], num_workers=0)
    c.data.num_threads = 2
    c.data.clip = {"num_frames": 2, "max_objects": 2}
    c.prompts = {"prob_point_input": 0.0, "num_init_cond_frames": 1}
    c.optimizer = {"lr": 1e-3, "lr_image_encoder": 1e-3, "layer_decay": 1.0,
                   "clip_norm": 1.0, "schedule": "constant", "warmup_steps": 0,
                   "total_steps": 100}
    c.train.num_steps = 20
    c.train.log_every = 5
    c.train.checkpoint_every = 5
    c.train.keep_every = None
    c.train.async_checkpoints = False
    c.train.dropout = False
    return c


def sweep():
    return [{"optimizer.lr": lr} for lr in (3e-4, 1e-3)]
