#!/usr/bin/env bash
# On the GPU machine, from the repository root (after pack.py, with .gpu carried):
#     eval "$(bash tests/e2e/gpu/install_device.sh)"
# Installs .gpu/wheels into /tmp/sag-site once (skipped when /tmp/sag-site/.done exists)
# and prints the PYTHONPATH line that puts them, then .gpu/site (clip), first.
# Only that line goes to stdout; pip's messages go to stderr.
set -euo pipefail

site=/tmp/sag-site
repo=$(pwd)
if [ ! -e "$site/.done" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$repo"/.gpu/wheels/*.whl >&2
    touch "$site/.done"
fi
echo "export PYTHONPATH=$site:$repo/.gpu/site"
