#!/usr/bin/env bash
# On the GPU machine, from the repository root (after pack.py, with .gpu beside it):
#     eval "$(bash tests/e2e/gpu/install_device.sh)"
# Installs .gpu/wheels into $SAG_GPU_SITE (default /tmp/sag-site), again whenever the set of wheels has
# changed since, and prints the PYTHONPATH line that puts them, then .gpu/site (clip), first.
# Only that line goes to stdout; pip's messages go to stderr.
set -euo pipefail

site="${SAG_GPU_SITE:-/tmp/sag-site}"
repo=$(pwd)
pins=$(ls .gpu/wheels | sha256sum | cut -d" " -f1)
if [ "$(cat "$site/.done" 2>/dev/null)" != "$pins" ]; then
    rm -rf "$site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$repo"/.gpu/wheels/*.whl >&2
    echo "$pins" > "$site/.done"
fi
echo "export PYTHONPATH=$site:$repo/.gpu/site"
