#!/usr/bin/env python
"""The converter demo: official weights -> tam_jax -> predict -> back to PyTorch, with parity.

1. Build the official PyTorch EfficientTAM with random weights and save it as an official
   checkpoint (`{'model': state_dict}`), as the released `.pt` files are.
2. Convert it with `scripts/convert.py to-jax` (strict) into an Orbax model directory.
3. Load that directory into tam_jax's image predictor and the `.pt` into the official predictor.
4. Segment a synthetic image from clicks, a box, and a mask prompt with both; print the
   parity figures (max |logit difference|, binarized-mask agreement, IoU-score difference).
5. Export back with `to-torch` and check the official model loads it with strict=True.

    python scripts/demo_convert.py [--variant efficienttam_ti_512x512] [--workdir artifacts/demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _synthetic_image(h=360, w=480):
    import numpy as np

    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([110 + 60 * np.sin(0.02 * xx + c) * np.cos(0.015 * yy) for c in range(3)], -1)
    img[(yy - 150) ** 2 + (xx - 200) ** 2 < 60**2] = (220, 60, 40)  # a red disc
    img[220:320, 300:430] = (40, 90, 200)  # a blue block
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="efficienttam_ti_512x512")
    parser.add_argument("--workdir", default="artifacts/demo_convert")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from scripts import convert
    from tam_jax.configs import get_config
    from tam_jax.convert.official import build_official_model, official_image_predictor, randomize_
    from tam_jax.predictors import build_image_predictor

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = get_config(args.variant)
    t0 = time.perf_counter()
    print(f"[1/5] official {cfg.name} with random weights -> {work}/official.pt")
    model = build_official_model(cfg, seed=0)
    randomize_(model, seed=0)
    torch.save({"model": model.state_dict()}, work / "official.pt")

    print("[2/5] convert.py to-jax (strict)")
    if convert.main(["to-jax", str(work / "official.pt"), str(work / "tam_jax_model"),
                     "--variant", cfg.name, "--overwrite"]):
        return 1

    print("[3/5] load both predictors; compile tam_jax")
    ours = build_image_predictor(cfg.name, work / "tam_jax_model")
    theirs = official_image_predictor(model)
    image = _synthetic_image()
    ours.set_image(image)
    with torch.no_grad():
        theirs.set_image(image)

    print("[4/5] segment with both and compare")
    prompts = {
        "1 click (multimask)": dict(point_coords=np.array([[200.0, 150.0]]),
                                    point_labels=np.array([1])),
        "3 clicks": dict(point_coords=np.array([[200.0, 150.0], [360.0, 270.0], [50.0, 50.0]]),
                         point_labels=np.array([1, 1, 0]), multimask_output=False),
        "box": dict(box=np.array([290.0, 210.0, 440.0, 330.0]), multimask_output=False),
    }
    rows, prev = [], None
    for name, kw in prompts.items():
        with torch.no_grad():
            mb, ib, lb = theirs.predict(**kw, return_logits=True)
        ma, ia, la = ours.predict(**kw, return_logits=True)
        rows.append((name, ma, mb, ia, ib))
        prev = lb[np.argmax(ib)][None] if ib.ndim else lb
    with torch.no_grad():
        mb, ib, _ = theirs.predict(mask_input=prev, multimask_output=False, return_logits=True)
    ma, ia, _ = ours.predict(mask_input=prev, multimask_output=False, return_logits=True)
    rows.append(("mask prompt", ma, mb, ia, ib))

    print(f"\n  {'prompt':<22}{'masks':>8}{'max|d logit|':>15}{'agreement':>12}{'max|d iou|':>13}")
    worst = 0.0
    for name, ma, mb, ia, ib in rows:
        d = float(np.abs(ma - mb).max())
        worst = max(worst, d)
        agree = float(((ma > 0) == (mb > 0)).mean()) * 100
        print(f"  {name:<22}{ma.shape[0]:>8}{d:>15.2e}{agree:>11.4f}%"
              f"{float(np.abs(ia - ib).max()):>13.2e}")

    print("\n[5/5] convert.py to-torch, then official load_state_dict(strict=True)")
    if convert.main(["to-torch", str(work / "tam_jax_model"), str(work / "roundtrip.pt"),
                     "--overwrite"]):
        return 1
    fresh = build_official_model(cfg, seed=1)
    fresh.load_state_dict(torch.load(work / "roundtrip.pt", weights_only=True)["model"],
                          strict=True)
    same = all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 model.state_dict().values()))
    print(f"  strict load ok; all 455 tensors bit-identical to the original: {same}")
    ok = worst <= 1e-3 and same
    print(f"\n{'PASS' if ok else 'FAIL'}: worst max|d logit| {worst:.2e} (bar 1e-3), "
          f"{time.perf_counter() - t0:.0f} s in all. Artifacts in {work}/")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
