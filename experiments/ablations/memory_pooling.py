"""Memory-pooling ablations (paper §3.2, Tables 4 and 7): what pooling the memory costs in
J&F and buys in FLOPs and latency, one training run per grid point.

    python scripts/sweep.py list     --config experiments/ablations/memory_pooling.py:s
    python scripts/sweep.py commands --config experiments/ablations/memory_pooling.py:s \
        --root /mnt/runs/pooling > launch.txt     # one line per unfinished run, for a cluster
    python scripts/sweep.py run      --config experiments/ablations/memory_pooling.py:s \
        --root /mnt/runs/pooling [--filter 'pool_window=2'] [--parallel 2]   # here
    python scripts/sweep.py collect  --root /mnt/runs/pooling   # CSV, Markdown table, plots
    # the local demo: tiny model, synthetic videos, 2 cores (`local_sweep()` below)
    python scripts/sweep.py run --config experiments/ablations/memory_pooling.py --local \
        --root /tmp/pooling_demo

Argument: the variant whose stage-2 recipe is ablated ("s" default, "ti"). Each run trains
that model's stage 2 (experiments/stage2_video.py: SA-V + SA-1B, bf16, SAM 2's prompts and
losses) from a stage-1 checkpoint (`init_from`, set it), shortened to 30k steps (one tenth of
the paper's 300k, our choice: the paper does not give its ablation schedule) with the warm-up
scaled alike, then is evaluated on SA-V val (J&F, `eval.data_dir`).

Grid (`sweep()`, the axes of peers_and_users.md §2.2):
    pool_window           1 (full RoPEAttention), 2 (official _1 / _2), 4
    log_area_constant     logits (eq. 5), keys (eq. 6), none (Linformer-style)
    pool_pointer_tokens   False (official), True ("pool all memory tokens")
    num_maskmem           7 (official), 3
    image_size            1024, 512
    seed                  0, 1
Window 1 pools nothing, so its constant and pointer settings are one run, not six: 13 memory
settings x 2 memory lengths x 2 resolutions x 2 seeds = 104 runs. Pick subsets with
`sweep.py --filter REGEX` (run names spell every override: pool_window=2,log_area_...).
"""

from __future__ import annotations

import itertools

from experiments import stage2_video

WINDOWS = (1, 2, 4)
CONSTANTS = ("logits", "keys", "none")
POINTER_POOLING = (False, True)
MEMORY_LENGTHS = (7, 3)
RESOLUTIONS = (1024, 512)
SEEDS = (0, 1)
STEPS = 30_000

CA = "model.memory_attention.cross_attention."


def get_config(arg: str = "s"):
    variant = {"s": "efficienttam_s", "ti": "efficienttam_ti"}.get(arg or "s")
    if variant is None:
        raise ValueError(f"memory_pooling: argument {arg!r} is not 's' or 'ti'")
    c = stage2_video.get_config(variant)  # full attention; the sweep sets the pooling
    c.init_from = f"/data/checkpoints/{variant}_stage1"
    c.optimizer.update({"total_steps": STEPS, "warmup_steps": STEPS // 20})
    c.train.num_steps = STEPS
    c.train.checkpoint_every = 2_000
    c.train.keep_every = None
    return c


def memory_settings(windows=WINDOWS, constants=CONSTANTS, pointer_pooling=POINTER_POOLING):
    """(window, constant, pointer pooling) triples without duplicates: window 1 pools nothing."""
    out = [(1, "logits", False)] if 1 in windows else []
    out += [(w, c, p) for w in windows if w != 1 for c in constants for p in pointer_pooling]
    return out


def grid(settings, memory_lengths, resolutions, seeds) -> list[dict]:
    return [{CA + "pool_window": w, CA + "log_area_constant": c, CA + "pool_pointer_tokens": p,
             "model.num_maskmem": m, "model.image_size": r, "train.seed": s, "data.seed": s}
            for (w, c, p), m, r, s in itertools.product(settings, memory_lengths, resolutions,
                                                         seeds)]


def sweep():
    return grid(memory_settings(), MEMORY_LENGTHS, RESOLUTIONS, SEEDS)


def local_sweep():
    """The local demo (`--local`: the tiny model at 128 px, an 8 x 8 memory grid): every
    window with eq. 5, the two other constants and pointer pooling at window 2, one seed."""
    settings = [(1, "logits", False), (2, "logits", False), (4, "logits", False),
                (2, "keys", False), (2, "none", False), (2, "logits", True)]
    return grid(settings, (7,), (128,), (0,))
