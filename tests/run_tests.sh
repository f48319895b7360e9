#!/usr/bin/env bash
# The one test command: sets up a virtual environment (once) and runs the CI test suite on the CPU.
#   bash tests/run_tests.sh [pytest args]
# SAG_TEST_VENV chooses the environment's folder (default: .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SAG_TEST_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps stable-diffusion-sdkit==2.1.5
exec "$venv/bin/python" -m pytest tests "$@"
