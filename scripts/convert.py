#!/usr/bin/env python
"""Convert EfficientTAM weights between the official PyTorch format and tam_jax.

  python scripts/convert.py to-jax SRC.pt DST_DIR [--variant NAME]
      Official checkpoint ({'model': state_dict}, a bare state dict, or 'module.'-prefixed keys)
      -> an Orbax model directory holding the Flax params and the variant name.
      The width (Ti / S) is detected from the weights. The resolution and memory-attention kind
      are not visible in the weights, so pass --variant for the _1, _2 and _512x512 checkpoints.

  python scripts/convert.py to-torch SRC_DIR DST.pt
      A tam_jax model directory -> an official-format checkpoint that the official builder
      loads with strict=True.

Conversion is strict: any missing key, unexpected key or shape mismatch stops it with one
error that lists all of them. Outputs are written atomically (never half-written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tam_jax.checkpointing import CheckpointError, load_model, save_model  # noqa: E402
from tam_jax.configs import RELEASED_VARIANTS, get_config  # noqa: E402
from tam_jax.convert.checkpoint import (  # noqa: E402
    ConversionError,
    load_official_checkpoint,
    official_to_params,
    params_to_official,
    save_official_checkpoint,
)


def _to_jax(args) -> None:
    params, cfg = load_official_checkpoint(args.src, args.variant)
    out = save_model(args.dst, params, cfg.name, overwrite=args.overwrite)
    n = sum(v.size for v in _leaves(params))
    print(f"converted {args.src} -> {out}  (variant {cfg.name}, {n:,} values)")


def _to_torch(args) -> None:
    params, variant = load_model(args.src)
    cfg = get_config(variant)
    # Round-trip through the strict checker so a damaged directory is reported, not exported.
    official_to_params(params_to_official(params, cfg), cfg, source=str(args.src))
    if Path(args.dst).exists() and not args.overwrite:
        raise SystemExit(f"error: {args.dst} exists (pass --overwrite to replace it)")
    out = save_official_checkpoint(params, cfg, args.dst)
    print(f"converted {args.src} -> {out}  (variant {variant}, official format {{'model': sd}})")


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-jax", help="official .pt -> tam_jax model directory")
    p.add_argument("src", help="official checkpoint (.pt)")
    p.add_argument("dst", help="output model directory (Orbax)")
    p.add_argument("--variant", choices=RELEASED_VARIANTS,
                   help="variant to convert as (default: efficienttam_ti / _s by width)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.set_defaults(fn=_to_jax)
    p = sub.add_parser("to-torch", help="tam_jax model directory -> official .pt")
    p.add_argument("src", help="model directory written by to-jax or the trainer")
    p.add_argument("dst", help="output checkpoint (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.set_defaults(fn=_to_torch)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except (ConversionError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
