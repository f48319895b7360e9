"""The benchmarks run end to end without a GPU where they can (bench_sag.py on the CPU); rows are well formed."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("config", "overhead_r", "peak_cfg_mib", "peak_sag_mib", "step_cfg_ms", "step_sag_ms", "unet_b_ms",
        "unet_2b_ms", "card", "torch") + tuple(
    key.format(name) for name in ("pag", "seg", "pag_seg") for key in (
        "step_{}_ms", "step_{}_work_ms", "{}_work_r", "{}_work_r_iqr", "peak_{}_mib", "peak_{}_work_mib"))


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
        assert all(row[f"{name}_outputs_finite"] is True and row[f"{name}_work_r"] > 0 for name in ("pag", "seg", "pag_seg"))


@pytest.mark.parametrize("methods, copies", [(("pag",), 1), (("seg",), 1), (("pag", "seg"), 2)])
def test_bench_sag_times_each_method_beside_its_own_rows_done_plainly(methods, copies):
    """bench_sag's work of PAG, SEG or both (PlainRows): the UNet call gets the very rows it gets with the methods
    on (x, timestep, context), and the step's result is plain CFG's (the rows are not read)."""
    from benchmarks import bench_sag
    from sag_ext.core.perturbed_params import PagParams, SegParams

    config, cpu = bench_sag.TINY_CONFIGS[0], torch.device("cpu")
    bench = bench_sag.Bench(config, bench_sag.build_unet(config.arch, cpu, torch.float32), cpu, 0, 2)
    calls = []
    bench.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0], args[1], kwargs["context"])), with_kwargs=True)
    kinds = {"pag": PagParams, "seg": SegParams}
    p, session = bench.generation(*(kinds[name](enabled=True) for name in methods))
    x = bench.noise * bench.sigmas[0]
    with torch.no_grad():
        guided = bench._step(x, 0, bench.adapter, p)
        work = bench._step(x, 0, bench_sag.PlainRows(copies))
        plain = bench._step(x, 0)
    session.close()
    (with_methods, with_work, without) = calls
    assert with_methods[0].shape[0] == (2 + copies) * config.batch and without[0].shape[0] == 2 * config.batch
    for ours, theirs in zip(with_methods, with_work):
        assert torch.equal(ours, theirs)
    scale = plain.abs().max()
    assert (work - plain).abs().max() < 1e-5 * scale < (guided - plain).abs().max()


def test_webui_gpu_rows_have_their_keys_and_the_floor_of_one_isolated_pass():
    """benchmarks/webui_gpu.py's row from probe records (it runs only on a GPU): medians, and the pass over B
    rows from the plain-pass variant by the host's clock (the call is isolated, so its wall time is its
    whole cost), not SAG's own pass (whose spans overlap the CFG call's)."""
    from benchmarks import webui_gpu

    def runs(seconds, pass_host_gpu):
        return [(s, {"peak_mib": 100.0 + s, "cuda_mallocs": 0, "step_segments_ms": {
            "call8>end8": {"host": 60.0, "gpu": 61.0}, "call4>end4": {"host": host, "gpu": gpu}}})
            for s, (host, gpu) in zip(seconds, pass_host_gpu)]

    timed = {"off": runs([1.0, 1.2, 1.1], [(0, 0)] * 3), "on": runs([2.0, 1.9, 2.3], [(70, 40)] * 3),
             "plain": runs([2.1, 2.2, 2.05], [(52, 40), (50, 38), (56, 30)]), "old": runs([2.5, 2.4, 2.6], [(0, 0)] * 3),
             "old_off": runs([1.3, 1.4, 1.2], [(0, 0)] * 3)}
    row = webui_gpu.row("sd15-512-b4", "GPU", timed)
    assert list(row) == ["config", "gpu", "steps", "repeats", "t_off_s", "t_sag_s", "t_old_s", "t_old_off_s", "t_unet_b_ms",
                         "floor_ratio", "t_off_plus_pass_s", "peak_off_mib", "peak_sag_mib"]
    assert (row["t_off_s"], row["t_sag_s"], row["t_old_s"], row["t_unet_b_ms"]) == (1.1, 2.0, 2.5, 52.0)
    assert row["t_old_off_s"] == 1.3  # the old extension's own SAG-off baseline, from its own webui
    assert row["floor_ratio"] == round(1 + 20 * 0.052 / 1.1, 4) and row["t_off_plus_pass_s"] == 2.1
    assert (row["peak_off_mib"], row["peak_sag_mib"]) == (101.2, 102.3)
    without_old = webui_gpu.row("sd15-512-b4", "GPU", {**timed, "old": None, "old_off": None})
    assert without_old["t_old_s"] is None and without_old["t_old_off_s"] is None



def test_guidance_gpu_rows_pair_each_repeat_with_its_own_sag_off_generation():
    """benchmarks/guidance_gpu.py's row: medians of the whole generations, each variant's floor from the isolated
    calls of 1-4 tiles of B rows, peaks, and the paired ratios (the median of each repeat's ratio to its own
    off generation), which a machine whose speed drifts between repeats does not move."""
    from benchmarks import guidance_gpu

    def runs(seconds, call_ms=None):
        return [(s, {"peak_mib": 100.0 + s, "call_ms": call_ms}) for s in seconds]

    # the machine is twice as fast in the last repeat: the medians mix repeats, the pairs do not
    calls = {"1": 25.0, "2": 30.0, "3": 35.0, "4": 45.0}  # as they come back through JSON
    timed = {"off": runs([1.0, 1.0, 0.5]), "sag": runs([1.5, 1.6, 0.8]), "builtin": runs([1.4, 1.5, 0.75]),
             "pag_seg": runs([2.0, 2.0, 1.0]), "tile_calls": runs([1.0, 1.0, 0.5], call_ms=calls)}
    row = guidance_gpu.row("sd15-512-b1", "GPU", "Forge abc", timed)
    assert (row["t_off_s"], row["t_sag_s"], row["t_builtin_s"]) == (1.0, 1.5, 1.4)
    assert row["call_ms"] == {1: 25.0, 2: 30.0, 3: 35.0, 4: 45.0}
    assert (row["floor_sag"], row["floor_pag"], row["floor_pag_seg"], row["floor_all"]) == (1.5, 1.1, 1.3, 1.8)
    assert row["floor_builtin_pag"] == row["floor_pag_separate"] == row["floor_pag"]
    assert (row["peak_off_mib"], row["peak_sag_mib"], row["peak_builtin_mib"]) == (101.0, 101.6, 101.5)
    assert (row["sag_off_paired"], row["builtin_off_paired"]) == (1.6, 1.5)
    assert (row["host"], row["repeats"]) == ("Forge abc", 3)
    assert (row["t_pag_seg_s"], row["pag_seg_off_paired"], row["peak_pag_seg_mib"]) == (2.0, 2.0, 102.0)
    assert (row["t_pag_s"], row["peak_pag_mib"], row["pag_off_paired"]) == (None, None, None)  # not measured

    del timed["builtin"]  # a host without a built-in SAG (Forge Neo): its cells are empty, ours as before
    row = guidance_gpu.row("sd15-512-b1", "GPU", "Forge Neo abc", timed)
    assert (row["t_builtin_s"], row["peak_builtin_mib"], row["builtin_off_paired"]) == (None, None, None)
    assert (row["t_sag_s"], row["sag_off_paired"], row["floor_sag"]) == (1.5, 1.6, 1.5)
    guidance_gpu.print_table([row])


def test_guidance_gpu_rows_hold_each_variants_work_done_without_it():
    """work_<c>: the off generations that do a variant's work without it (B or 2B plain rows in the host's call,
    a plain call over B rows, both) over off's median; <c>_work_paired: each repeat's variant over its own work
    generation; a variant whose work was not measured has None there, and its floor from the calls as before."""
    from benchmarks import guidance_gpu

    def runs(seconds):
        return [(s, {"peak_mib": 10.0 * s, "call_ms": {"1": 10.0, "2": 12.0, "3": 14.0, "4": 17.0}}) for s in seconds]

    timed = {"off": runs([1.0, 1.0, 2.0]), "pag": runs([1.2, 1.3, 2.2]), "seg": runs([1.25, 1.2, 2.4]),
             "pag_seg": runs([1.5, 1.4, 2.9]), "sag": runs([1.6, 1.6, 3.0]),
             "rows1": runs([1.2, 1.25, 2.0]), "rows2": runs([1.5, 1.5, 3.0]), "call": runs([1.5, 1.6, 3.0])}
    timed["tile_calls"] = timed["off"]
    row = guidance_gpu.row("sd15-512-b4", "GPU", "A1111 abc", timed)
    assert (row["work_pag"], row["work_seg"], row["work_pag_separate"]) == (1.25, 1.25, 1.25)  # rows1 over off
    assert (row["work_pag_seg"], row["work_sag"], row["work_all"]) == (1.5, 1.6, None)  # rows2_call not measured
    assert (row["pag_work_paired"], row["seg_work_paired"]) == (1.04, 1.0417)  # 1.2/1.2, 1.3/1.25, 2.2/2.0
    assert (row["pag_seg_work_paired"], row["sag_work_paired"], row["all_work_paired"]) == (0.9667, 1.0, None)
    assert row["pag_work_paired_iqr"] == [1.0, 1.1] and row["all_work_paired_iqr"] is None  # quartiles of 1, 1.04, 1.1
    assert (row["t_rows1_s"], row["t_rows2_s"], row["peak_call_mib"]) == (1.25, 1.5, 30.0) and "t_rows2_call_s" not in row
    assert row["floor_pag"] == round(1 + 20 * 2.0 / 1000 / 1.0, 4)  # the isolated calls' floor stays
    single = guidance_gpu.row("sdxl-2048-b1", "GPU", "A1111 abc", {label: r[:1] for label, r in timed.items()})
    assert single["pag_work_paired"] == 1.0 and single["pag_work_paired_iqr"] is None  # one repeat: no spread
    guidance_gpu.print_table([row])


def test_guidance_gpu_rows_hold_where_an_a1111_step_goes():
    """With A1111's probe records (step segments), each variant's row holds the medians of its segments over
    the repeats, host and GPU; Forge's records have none, and its rows no such cells (above)."""
    from benchmarks import guidance_gpu

    def runs(seconds, before_call):
        segments = [{"step>call6": {"host": ms, "gpu": ms / 2}, "call6>end6": {"host": 5.0, "gpu": 9.0}}
                    for ms in before_call]
        return [(s, {"peak_mib": 1.0, "call_ms": {"1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0}, "step_segments_ms": step})
                for s, step in zip(seconds, segments)]

    timed = {"off": runs([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), "pag_seg": runs([1.2, 1.1, 1.3], [2.0, 4.0, 3.0])}
    timed["tile_calls"] = timed["off"]
    row = guidance_gpu.row("sd15-512-b1", "GPU", "A1111 abc", timed)
    assert row["segments_pag_seg_ms"] == {"step>call6": [3.0, 1.5], "call6>end6": [5.0, 9.0]}
    assert row["segments_off_ms"]["step>call6"] == [1.0, 0.5] and "segments_sag_ms" not in row


def test_guidance_gpu_variants_name_the_setting_they_change():
    """pag_separate is PAG with its rows in a call of their own, through the request's settings."""
    from benchmarks import guidance_gpu

    body = guidance_gpu.payload(512, 1, *guidance_gpu.VARIANTS["pag_separate"])
    assert body["override_settings"] == {"pag_in_webui_call": False} and body["override_settings_restore_afterwards"]
    assert body["alwayson_scripts"] == guidance_gpu.payload(512, 1, *guidance_gpu.VARIANTS["pag"])["alwayson_scripts"]


def test_guidance_gpu_merges_the_rows_of_each_hosts_run(tmp_path, monkeypatch):
    """`--merge` (no GPU): the rows of runs in several webuis, one file each, join into one file."""
    import json
    import sys
    from benchmarks import guidance_gpu

    a1111, forge = tmp_path / "a.json", tmp_path / "f.json"
    row = {"config": "sd15-512-b1", "t_off_s": 1.0, "peak_off_mib": 10.0,
           **{f"{key}_{label}{unit}": None for label in guidance_gpu.VARIANTS for key, unit in (("t", "_s"), ("peak", "_mib"))}}
    a1111.write_text(json.dumps([{**row, "host": "A1111"}]))
    forge.write_text(json.dumps([{**row, "host": "Forge"}]))
    monkeypatch.setattr(sys, "argv", ["guidance_gpu.py", "--merge", str(a1111), str(forge), "--json", str(tmp_path / "all.json")])
    guidance_gpu.main()
    assert [r["host"] for r in json.loads((tmp_path / "all.json").read_text())] == ["A1111", "Forge"]


def test_webui_gpu_rounds_rotate_and_drop_a_failing_variant():
    """Each repeat runs every variant once, starting one later each round; a variant's probe request is
    posted right before its generation; warm-up rounds are not kept; a variant whose webui fails is
    dropped, the others go on."""
    from benchmarks import webui_gpu

    calls = []

    class FakeWebUI:
        def __init__(self, fail=False):
            self.fail = fail

        def post(self, path, body):
            calls.append(body if path == "/sdapi/v1/txt2img" else path)
            if self.fail:
                raise webui_gpu.WebUIError("it cannot")

        def get(self, path):
            return {"label": calls[-1]}

    variants = [("off", FakeWebUI(), "off body", ()), ("plain", FakeWebUI(), "plain body", ("/sag-bench/plain-pass",)),
                ("old", FakeWebUI(fail=True), "old body", ())]
    runs = webui_gpu.measure(variants, warmup=1, repeats=2)
    assert calls == ["off body", "/sag-bench/plain-pass", "plain body", "old body",  # warm-up; old fails
                     "/sag-bench/plain-pass", "plain body", "off body",  # round 1 starts at the second
                     "off body", "/sag-bench/plain-pass", "plain body"]  # round 2 at the third (dropped)
    calls.clear()
    webui_gpu.measure([("both", FakeWebUI(), "body", ("/sag-bench/rows-2", "/sag-bench/extra-call"))], 0, 1)
    assert calls == ["/sag-bench/rows-2", "/sag-bench/extra-call", "body"]  # every request, then the generation
    assert list(runs) == ["off", "plain"]
    assert [[record["label"] for _, record in runs[label]] for label in runs] == [["off body"] * 2, ["plain body"] * 2]


def test_webui_gpu_recomputes_the_rows_from_runs_records(tmp_path):
    """`--from-records` (no GPU): the rows of runs split by configuration come back from their records files."""
    def record(seconds, peak, pass_host=None):
        segments = {"call2>end2": {"host": 50.0, "gpu": 50.0}}
        if pass_host is not None:
            segments["call1>end1"] = {"host": pass_host, "gpu": pass_host - 9}
        return [seconds, {"peak_mib": peak, "cuda_mallocs": 2, "step_segments_ms": segments}]

    def runs(pass_ms):
        return {"off": [record(1.0, 10.0), record(1.2, 11.0)], "on": [record(2.0, 12.0, 60.0), record(2.2, 12.0, 60.0)],
                "plain": [record(2.1, 10.0, pass_ms - 1), record(2.1, 10.0, pass_ms + 1)]}

    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, (name, pass_ms) in zip(files, (("sd15-512-b1", 50.0), ("sdxl-1024-b1", 140.0))):
        path.write_text(json.dumps({"gpu": "GPU X", "configs": {name: runs(pass_ms)}}))
    rows_file = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "webui_gpu.py"), "--from-records", *map(str, files),
                           "--json", str(rows_file)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    b1, sdxl = json.loads(rows_file.read_text())
    assert (b1["config"], b1["gpu"], b1["t_off_s"], b1["t_sag_s"]) == ("sd15-512-b1", "GPU X", 1.1, 2.1)
    assert (b1["t_unet_b_ms"], sdxl["config"], sdxl["t_unet_b_ms"]) == (50.0, "sdxl-1024-b1", 140.0)
    assert b1["floor_ratio"] == round(1 + 20 * 0.050 / 1.1, 4) and b1["t_old_s"] is None
