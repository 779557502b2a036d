"""Line charts as PNG with Pillow only (no plotting library in the dependencies).

    line_chart({"loss": (steps, losses)}, "loss.png", title="training loss", xlabel="step")
    read_metrics("workdir/metrics.jsonl", "train/loss") -> (steps, values)

Used for the demo's loss curve and the sweep plots; axes with "nice" ticks, a light grid, one
colour per series, a legend, optional log-scale y.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tam_jax.evaluation.overlay import object_colour

Series = tuple[Sequence[float], Sequence[float]]


def read_metrics(path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in a trainer's metrics.jsonl (lines without the key skipped;
    a later line for the same step, as after a resume, replaces the earlier one)."""
    by_step: dict[int, float] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
            if key in row and "step" in row:
                by_step[int(row["step"])] = float(row[key])
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"non-finite axis range [{lo}, {hi}]")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}"
    return f"{v:.3g}"


def line_chart(series: Mapping[str, Series], path, title: str = "", xlabel: str = "",
               ylabel: str = "", log_y: bool = False, size: tuple[int, int] = (720, 440),
               lines: bool = True) -> Path:
    """Draw the series (name -> (x, y)) into a PNG at `path`; returns the path. With
    `lines=False` a scatter plot (points only, drawn larger)."""
    data = {k: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for k, (x, y) in
            series.items() if len(x)}
    if not data:
        raise ValueError(f"{path}: nothing to plot (every series is empty)")
    for name, (x, y) in data.items():
        if x.shape != y.shape:
            raise ValueError(f"series {name!r}: x {x.shape} and y {y.shape} differ")
        if log_y and (y <= 0).any():
            raise ValueError(f"series {name!r}: log scale needs positive values")
    tf = np.log10 if log_y else (lambda v: v)
    xs = np.concatenate([x for x, _ in data.values()])
    ys = np.concatenate([tf(y) for _, y in data.values()])
    ys = ys[np.isfinite(ys)]
    x_ticks = nice_ticks(float(xs.min()), float(xs.max()))
    y_ticks = nice_ticks(float(ys.min()), float(ys.max())) if ys.size else [0.0, 1.0]
    x0, x1 = min(x_ticks[0], xs.min()), max(x_ticks[-1], xs.max())
    y0, y1 = min(y_ticks[0], ys.min()), max(y_ticks[-1], ys.max())
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    w, h = size
    left, right, top, bottom = 70, 20, 36, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    for t in x_ticks:
        u, _ = px(t, y0)
        d.line([(u, top), (u, h - bottom)], fill=(230, 230, 230))
        d.text((u, h - bottom + 6), _fmt(t), fill="black", font=font, anchor="ma")
    for t in y_ticks:
        _, v = px(x0, t)
        d.line([(left, v), (w - right, v)], fill=(230, 230, 230))
        d.text((left - 6, v), _fmt(10**t if log_y else t), fill="black", font=font, anchor="rm")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    legend_w = 35 + max(font.getlength(name) for name in data)  # line + gap + longest name
    for k, (name, (x, y)) in enumerate(data.items()):
        ok = np.isfinite(tf(y))
        pts = [px(a, b) for a, b in zip(x[ok], tf(y[ok]))]
        colour = object_colour(k)
        if lines and len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        r = 2 if lines else 4
        for u, v in pts if (len(pts) <= 40 or not lines) else []:
            d.ellipse([u - r, v - r, u + r, v + r], fill=colour)
        ly = top + 8 + 14 * k
        lx = w - right - legend_w
        d.line([(lx, ly), (lx + 20, ly)], fill=colour, width=3)
        d.text((lx + 25, ly), name, fill="black", font=font, anchor="lm")
    d.text((w / 2, 10), title, fill="black", font=font, anchor="ma")
    d.text((w / 2, h - 18), xlabel, fill="black", font=font, anchor="ma")
    d.text((8, top - 18), ylabel + (" (log)" if log_y else ""), fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
