"""The benchmark (benchmarks/bench_sag.py) runs end to end on the CPU and writes well-formed rows."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("config", "overhead_r", "peak_cfg_mib", "peak_sag_mib", "step_cfg_ms", "step_sag_ms", "unet_b_ms",
        "unet_2b_ms", "card", "torch")


def test_tiny_benchmark_writes_finite_rows(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sag.py"), "--tiny", "--json", str(out)],
                   cwd=ROOT, check=True, timeout=600)
    rows = json.loads(out.read_text())
    assert [row["config"] for row in rows] == ["tiny-sd15", "tiny-sdxl"]
    for row in rows:
        assert all(key in row for key in KEYS), row
        numbers = [value for value in row.values() if isinstance(value, (int, float))]
        assert all(math.isfinite(value) for value in numbers), row
        assert row["outputs_finite"] is True
        assert row["step_sag_ms"] > 0 and row["unet_b_ms"] > 0
