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


def test_webui_gpu_rows_have_the_issue_keys_and_the_floor_of_one_pass():
    """benchmarks/webui_gpu.py's row from probe records (it runs only on a GPU): medians, the pass over B rows."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import webui_gpu

    def runs(seconds, pass_ms):
        return [(s, {"peak_mib": 100.0 + s, "cuda_mallocs": 0, "model_call_ms_by_batch": {"4": ms, "8": 60.0}})
                for s, ms in zip(seconds, pass_ms)]

    off, on = runs([1.0, 1.2, 1.1], [0, 0, 0]), runs([2.0, 1.9, 2.3], [40.0, 50.0, 45.0])
    row = webui_gpu.row("sd15-512-b4", "GPU", (off, on), None)
    assert list(row) == ["config", "gpu", "steps", "repeats", "t_off_s", "t_sag_s", "t_old_s", "t_unet_b_ms",
                         "floor_ratio", "peak_off_mib", "peak_sag_mib"]
    assert (row["t_off_s"], row["t_sag_s"], row["t_old_s"], row["t_unet_b_ms"]) == (1.1, 2.0, None, 45.0)
    assert row["floor_ratio"] == round(1 + 20 * 0.045 / 1.1, 4)
    assert (row["peak_off_mib"], row["peak_sag_mib"]) == (101.2, 102.3)
