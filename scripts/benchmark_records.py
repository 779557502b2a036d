"""The regression check of `scripts/benchmark.py`: figures, the recorded table, warnings.

Every benchmark subcommand writes a JSON result. `figures_of(what, result)` names the
figures in it that are tracked over time (one `Figure` per key: the key says what was
measured and at which size, so only like is compared with like). The last figures recorded
for each key live in one Markdown table at the end of `docs/benchmarks.md`, under the
heading `RECORDS_HEADING`:

    | date | key | value | unit | better | command |
    |---|---|---:|---|---|---|
    | 2026-11-30 | track efficienttam_ti_512x512 tam_jax | 1013.8 | ms/frame | lower | python ... |

Rows are appended (`append_records`, `benchmark.py ... --record`), so the last row of a key
is its latest figure. `regressions` compares a run's figures with those rows and returns one
warning per figure worse than its record by more than `TOLERANCE` (10 %).
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

RECORDS_HEADING = "## Recorded figures"
TOLERANCE = 0.10
_HEADER = ("| date | key | value | unit | better | command |\n"
           "|---|---|---:|---|---|---|\n")


@dataclasses.dataclass(frozen=True)
class Figure:
    """One tracked number. `better` is "lower" (times) or "higher" (rates, % of peak)."""

    key: str
    value: float
    unit: str
    better: str
    date: str = ""
    command: str = ""

    def __post_init__(self):
        if self.better not in ("lower", "higher"):
            raise ValueError(f"figure {self.key!r}: better must be lower or higher, "
                             f"not {self.better!r}")

    def change_vs(self, old: Figure) -> float:
        """Relative change, positive = worse: +0.12 is 12 % worse than `old`."""
        rel = (self.value - old.value) / abs(old.value) if old.value else 0.0
        return rel if self.better == "lower" else -rel


# -- figures of each subcommand's JSON -------------------------------------------------------
def _side_by_side(what: str, results: dict, unit: str) -> list[Figure]:
    out = []
    for variant, r in results.items():
        out.append(Figure(f"{what} {variant} tam_jax", r["tam_jax"]["median_s"] * 1e3,
                          unit, "lower"))
        out.append(Figure(f"{what} {variant} ratio", r["ratio_tam_jax_over_official"],
                          "tam_jax/official", "lower"))
    return out


def _track(results: dict) -> list[Figure]:
    results = {v: r for v, r in results.items() if "tam_jax" in r}  # --flops-only: no times
    out = _side_by_side("track", results, "ms/frame")
    for variant, r in results.items():
        for n, stats in r.get("tam_jax_objects", {}).items():
            if int(n) != 1:
                out.append(Figure(f"track {variant} tam_jax {n} objects",
                                  stats["median_s"] * 1e3, "ms/frame", "lower"))
    return out


def _train_step(result: dict) -> list[Figure]:
    cpu = result.get("cpu")
    if not cpu or "train_step" not in cpu:
        return []
    c = cpu["config"]
    size = (f"{c['variant']}@{c['resolution']} b{c['batch']} t{c['frames']} o{c['objects']} "
            f"{c['plan']} {c['conv_impl']} seg{c.get('memory_segments', 0)}"
            + (" micro" if c.get("micro") else ""))
    step = cpu["train_step"]
    return [Figure(f"train-step cpu {size} % of matmul peak", step["ratio_to_peak"] * 100,
                   "%", "higher"),
            Figure(f"train-step cpu {size} step", step["median_s"] * 1e3, "ms", "lower")]


def _input(result: dict) -> list[Figure]:
    res = result["meta"].get("sizes", {}).get("resolution", "?")
    return [Figure(f"input {source}@{res} pipeline per core", r["pipeline_frames_per_s"],
                   "frames/s", "higher")
            for source, r in result["results"].items() if "pipeline_frames_per_s" in r]


def _matmul(result: dict) -> list[Figure]:
    n = result["meta"]["n"]
    return [Figure(f"matmul {n}^3 {name}", rate, "GFLOP/s", "higher")
            for name, rate in result["square_gflops"].items()]


def figures_of(what: str, result: dict) -> list[Figure]:
    """The tracked figures of one subcommand's JSON result (see `scripts/benchmark.py`)."""
    if what in ("image", "encoder"):
        return _side_by_side(what, result["results"], "ms")
    if what == "track":
        return _track(result["results"])
    if what in ("train", "train-step"):
        return _train_step(result)
    if what == "input":
        return _input(result)
    if what == "matmul":
        return _matmul(result)
    raise ValueError(f"no figures defined for benchmark {what!r}")


# -- the recorded table ----------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1].replace("\\|", "\0")
    return [c.strip().replace("\0", "|") for c in inner.split("|")]


def read_records(path: str | Path) -> dict[str, Figure]:
    """key -> the last recorded Figure of that key. A missing table is no records; a row that
    cannot be read is an error naming the file and line (a silently skipped row would hide a
    regression)."""
    path = Path(path)
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(RECORDS_HEADING))
    except StopIteration:
        return {}
    records: dict[str, Figure] = {}
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.startswith("## "):
            break
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| date "):
            continue
        cells = _cells(line)
        if len(cells) != 6:
            raise ValueError(f"{path}:{i + 1}: a record row has 6 cells (date, key, value, "
                             f"unit, better, command), this one {len(cells)}: {line!r}")
        date, key, value, unit, better, command = cells
        try:
            records[key] = Figure(key, float(value), unit, better, date, command)
        except ValueError as e:
            raise ValueError(f"{path}:{i + 1}: unreadable record row ({e}): {line!r}") from None
    return records


def regressions(figures: list[Figure], records: dict[str, Figure],
                tolerance: float = TOLERANCE) -> list[str]:
    """One warning per figure worse than the last record of its key by more than tolerance."""
    out = []
    for f in figures:
        old = records.get(f.key)
        if old is not None and f.change_vs(old) > tolerance:
            out.append(f"WARNING: regression: {f.key}: {f.value:.4g} {f.unit} against "
                       f"{old.value:.4g} recorded on {old.date or '?'} "
                       f"({f.change_vs(old) * 100:+.1f} % worse; {f.better} is better)")
    return out


def comparison_table(figures: list[Figure], records: dict[str, Figure]) -> str:
    """Plain-text table: each figure, its last record, the change (+ = worse)."""
    rows = [f"{'figure':<64}{'now':>12}{'recorded':>12}{'worse by':>10}  unit"]
    for f in figures:
        old = records.get(f.key)
        rec = f"{old.value:>12.4g}" if old else f"{'-':>12}"
        chg = f"{f.change_vs(old) * 100:>+9.1f}%" if old else f"{'new':>10}"
        rows.append(f"{f.key:<64}{f.value:>12.4g}{rec}{chg}  {f.unit}")
    return "\n".join(rows)


def append_records(path: str | Path, figures: list[Figure], command: str,
                   date: str | None = None) -> None:
    """Append the figures as rows of the records table (created at the end of the file if
    missing). The table must be the file's last section, so rows append at its end; the file
    is written whole to a temporary name and renamed, never left half-written."""
    path = Path(path)
    date = date or datetime.date.today().isoformat()
    text = path.read_text() if path.exists() else ""
    if RECORDS_HEADING not in text:
        text = (text.rstrip("\n") + "\n\n" if text else "") + (
            f"{RECORDS_HEADING}\n\nAppended by `python scripts/benchmark.py <what> --record`; "
            "every run warns when a figure is more than 10 % worse than the last row of its "
            "key.\n\n" + _HEADER)
    else:
        tail = text[text.index(RECORDS_HEADING):].splitlines()[1:]
        if any(ln.startswith("## ") for ln in tail):
            raise ValueError(f"{path}: the {RECORDS_HEADING!r} table must be the last section "
                             "(rows are appended at the end of the file)")
    cmd = command.replace("|", "\\|")
    rows = "".join(f"| {date} | {f.key} | {f.value:.6g} | {f.unit} | {f.better} | {cmd} |\n"
                   for f in figures)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text.rstrip("\n") + "\n" + rows)
    tmp.replace(path)
