#!/usr/bin/env bash
# The real webui v1.10.1 on a GPU machine without network. First, on a machine with network:
# python3 tests/e2e/gpu/pack.py ... (see its docstring); then on the GPU machine, from the repository root
# with ".gpu" beside it, one command:
#   bash tests/e2e/gpu/run.sh contract [pytest args]   # tests/e2e/gpu/test_gpu_contract.py, webuis side by side
#   bash tests/e2e/gpu/run.sh bench [webui_gpu.py args]  # benchmarks/webui_gpu.py against .gpu/extensions/sd_webui_SAG
#   bash tests/e2e/gpu/run.sh guidance-bench [guidance_gpu.py args]  # benchmarks/guidance_gpu.py --webui a1111
# or, packed with --forge (.gpu/forge):
#   bash tests/e2e/gpu/run.sh forge-contract [pytest args]  # tests/e2e/forge/test_forge_gpu.py
#   bash tests/e2e/gpu/run.sh forge-bench [guidance_gpu.py args]  # benchmarks/guidance_gpu.py --webui forge
# It installs the wheels, writes the SD1.5- and SDXL-size random checkpoints once per machine and runs the
# webuis with the e2e harness on CUDA. Logs, the benchmark's rows and records and, for bench, `nvidia-smi dmon`'s
# record go to $OUT (default /tmp/sag-gpu-out). SAG_GPU_LAYOUTS names fewer checkpoints to write (the SDXL one takes
# a minute) where the run needs only those.
set -euo pipefail
cd "$(dirname "$0")/../../.."
eval "$(bash tests/e2e/gpu/install_device.sh)"
export SD_WEBUI_PYTHONPATH="$PYTHONPATH" SD_WEBUI_TEST_CACHE="${SD_WEBUI_TEST_CACHE:-/tmp/sag-checkpoints}" PYTHONUNBUFFERED=1
what="${1:?contract, bench, guidance-bench, forge-contract or forge-bench}"
shift
case "$what" in
  forge-*) export SD_FORGE_PATH="$PWD/.gpu/forge" SD_FORGE_PYTHON=python3 webui="$PWD/.gpu/forge" layouts="sd15 sdxl" ;;
  *) export SD_WEBUI_PATH="$PWD/.gpu/webui" SD_WEBUI_PYTHON=python3 webui="$PWD/.gpu/webui" layouts="sd1_wide sdxl_full" ;;
esac
layouts="${SAG_GPU_LAYOUTS:-$layouts}"  # e.g. "sd1_wide" alone, for a run of SD1.5 configurations only
out="${OUT:-/tmp/sag-gpu-out}"
mkdir -p "$out"
python3 - <<'PY'
import os
from harness import checkpoints
print(checkpoints.make_checkpoints(os.environ["SD_WEBUI_TEST_CACHE"], "python3", os.environ["webui"],
                                   layouts=tuple(os.environ["layouts"].split())))
PY
case "$what" in
  contract) SAG_E2E_DEVICE=cuda python3 -m pytest tests/e2e/gpu -n 9 --dist loadgroup -rs "$@" 2>&1 | tee "$out/contract.log" ;;
  bench)  # with the GPU's clocks, power, temperature and load once a second beside it (the bench prints times)
    nvidia-smi dmon -s pcu -o T -d 1 > "$out/gpu-dmon.log" 2>&1 &
    dmon=$!
    python3 benchmarks/webui_gpu.py --old-extension .gpu/extensions/sd_webui_SAG --json "$out/webui-gpu.json" \
      --records "$out/webui-gpu.records.json" "$@" \
      2>&1 | tee "$out/bench.log"
    kill "$dmon" 2>/dev/null || true ;;
  guidance-bench) python3 benchmarks/guidance_gpu.py --webui a1111 --json "$out/guidance-gpu.json" "$@" 2>&1 | tee "$out/guidance-bench.log" ;;
  forge-contract) SAG_E2E_DEVICE=cuda python3 -m pytest tests/e2e/forge/test_forge_gpu.py -rs -s "$@" 2>&1 | tee "$out/forge-contract.log" ;;
  forge-bench) python3 benchmarks/guidance_gpu.py --webui forge --json "$out/forge-gpu.json" "$@" 2>&1 | tee "$out/forge-bench.log" ;;
  *) echo "usage: $0 contract|bench|guidance-bench|forge-contract|forge-bench [args]" >&2; exit 2 ;;
esac
