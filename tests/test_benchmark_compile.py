"""scripts/benchmark_compile.py at its tiniest settings: it lowers, compiles and runs the
clip-loss gradient (GT-mask plan: the cheapest compile; the click plan's scanned correction
loop is proved against the official model in test_clip_forward_parity.py), and its JSON holds
the phases' times and sizes, a finite loss and gradient norm."""

import json
import math

from scripts import benchmark_compile


def test_benchmark_compile_reports_its_figures(tmp_path):
    out = tmp_path / "bc.json"
    got = benchmark_compile.main(["--variant", "tiny", "--resolution", "64", "--frames", "3",
                                  "--objects", "1", "--plan", "mask", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(got))
    assert got["corrections"] == 0 and got["plan"] == "mask" and got["frames"] == 3
    assert got["lower_s"] > 0 and got["compile_s"] > 0 and got["peak_rss_gib"] > 0
    assert got["hlo_chars"] > 100_000 and got["temp_mib"] is not None and got["temp_mib"] > 0
    assert math.isfinite(got["loss"]) and got["loss"] > 0
    assert math.isfinite(got["grad_norm"]) and got["grad_norm"] > 0
