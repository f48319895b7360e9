"""Pack what the real webui v1.10.1 (or, with ``--forge``, a Forge webui) needs on a GPU machine without network into ``.gpu/``.

The GPU machine is assumed to have Python 3.12, torch, numpy, pillow and transformers 5.x (too new for
the webui), but no gradio/fastapi/pydantic and no network; only this repository's working tree, with
``.gpu/`` beside it, reaches it (``TRAVEL_LIMIT_MIB``, 64 by default, is what the transfer allows).
This script, run on a machine with network (stdlib only, any Python 3.9+), builds::

    .gpu/webui/             the webui's code (no .git, images, models, tests, venv),
                            plus repositories/<each>/ with only their runtime files
    .gpu/wheels/*.whl       the pins of device_wheels.txt, for cp312 / manylinux x86_64
    .gpu/site/clip/         openai CLIP's package folder (its wheel does not build offline)
    .gpu/extensions/<name>/ a code-only copy of each --extension DIR

Wheels are cached in ``$SAG_GPU_WHEEL_CACHE`` (default ~/.cache/sd-webui-sag-gpu-wheels), so re-packing
downloads nothing new; pins marked ``# build`` in device_wheels.txt (sdist only) are built here with
``pip wheel --no-deps``. The script prints the sizes and exits 1 if the travelling tree (tracked +
untracked-not-ignored files + .gpu) is over the limit.

Usage, with the webui checkout (its ``repositories/`` in place) and openai CLIP's source at the webui's
pin (d50d76daa670286dd6cacf3bcd80b5e4823fc8e1) extracted to a folder::

    python3 tests/e2e/gpu/pack.py --webui ~/stable-diffusion-webui --clip ~/CLIP \
        [--extension ~/sd_webui_SAG]

On the GPU machine, from the repository root::

    eval "$(bash tests/e2e/gpu/install_device.sh)"   # wheels -> $SAG_GPU_SITE, sets PYTHONPATH

then start the webui from ``.gpu/webui`` with that PYTHONPATH (the wheels first, so its pins shadow the
machine's own transformers, huggingface_hub, tokenizers, ...); ``run.sh`` does all of it.

With ``--forge DIR`` (a Forge-family checkout with its ``repositories/``) it packs that instead, into
``.gpu/forge/``: its code without the model families' configs (Forge, Neo) or tokenizer data (reForge,
Classic) other than SD1.5's and SDXL's and without the built-in extensions other than its SAG, PAG and soft
inpainting, the pins of ``device_wheels_forge.txt``, and, from ``--writer-repositories`` (the A1111 webui's
``repositories/``), the ldm and sgm code that writes the test checkpoints::

    python3 tests/e2e/gpu/pack.py --forge ~/stable-diffusion-webui-forge \
        --writer-repositories ~/stable-diffusion-webui/repositories

Forge Neo the same way, with its own wheels: ``--forge ~/forge-neo --pins tests/e2e/gpu/device_wheels_neo.txt``;
reForge with the webui's wheels (gradio 3) and openai CLIP, which its k-diffusion imports:
``--forge ~/reForge --pins tests/e2e/gpu/device_wheels.txt --clip ~/CLIP``; Forge Classic the same, with
its pillow-heif and spandrel over those:
``--pins tests/e2e/gpu/device_wheels.txt --pins tests/e2e/gpu/device_wheels_classic.txt``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
PINS_FILES = {"webui": HERE / "device_wheels.txt", "forge": HERE / "device_wheels_forge.txt"}
WHEEL_CACHE = Path(os.environ.get("SAG_GPU_WHEEL_CACHE", Path.home() / ".cache" / "sd-webui-sag-gpu-wheels"))
LIMIT_MIB = int(os.environ.get("TRAVEL_LIMIT_MIB", "64"))
TARGET_MIB = LIMIT_MIB - 4

PLATFORM_ARGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"] + [
    arg for platform in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                         "manylinux2014_x86_64", "manylinux1_x86_64") for arg in ("--platform", platform)]

#: Files the webui needs to start and serve the API and UI (grid labels use modules/Roboto-Regular.ttf).
WEBUI_SUFFIXES = (".py", ".js", ".mjs", ".css", ".html", ".json", ".yaml", ".txt", ".ttf")
#: Files the pinned repositories need (model configs, BPE vocabularies, the webui-assets fonts).
REPOSITORY_SUFFIXES = (".py", ".yaml", ".json", ".txt.gz", ".css", ".woff2")
#: Top-level webui folders that hold no code the webui needs (or user data).
WEBUI_SKIP_DIRS = {"models", "extensions", "embeddings", "test", "outputs", "log", "tmp", "repositories"}
#: Top-level webui files a run may have written (settings, caches).
WEBUI_SKIP_FILES = {"config.json", "ui-config.json", "cache.json", "params.txt"}
#: Extension files to copy.
EXTENSION_SUFFIXES = (".py", ".js", ".css", ".html", ".json", ".yaml", ".txt", ".ini")


def copy_code(src: Path, dst: Path, suffixes: tuple[str, ...], skip_dirs=frozenset(), skip_files=frozenset()):
    """Copy the files under ``src`` ending in one of ``suffixes``, through linked folders (a repository's
    ``ldm`` may be a link to an installed package); top-level ``skip_*`` names, top-level virtual
    environments (a `venv` under any name), dot-folders and ``__pycache__`` are left out."""
    skip_dirs = set(skip_dirs) | {venv.parent.name for venv in src.glob("*/pyvenv.cfg")}
    walked = (Path(folder) / name for folder, _, names in os.walk(src, followlinks=True) for name in names)
    for path in sorted(walked):
        rel = path.relative_to(src)
        if (not path.is_file() or not path.name.endswith(suffixes) or rel.parts[0] in skip_dirs
                or (len(rel.parts) == 1 and rel.name in skip_files)
                or any(part.startswith(".") or part == "__pycache__" for part in rel.parts[:-1])):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)


def copy_repositories(webui: Path, dst: Path):
    """The runtime files of each folder in the webui's ``repositories/`` (if it has one)."""
    for repository in sorted((webui / "repositories").glob("*")):
        if repository.is_dir():
            copy_code(repository, dst / "repositories" / repository.name, REPOSITORY_SUFFIXES)


def pack_webui(webui: Path, dst: Path):
    copy_code(webui, dst, WEBUI_SUFFIXES, WEBUI_SKIP_DIRS, WEBUI_SKIP_FILES)
    copy_repositories(webui, dst)
    (dst / "localizations").mkdir(exist_ok=True)  # the webui lists it at startup


#: Forge's folders of model-family configs and built-in extensions that the GPU runs use.
FORGE_MODEL_CONFIGS = ("runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0")
FORGE_EXTENSIONS = ("sd_forge_sag", "sd_forge_perturbed_attention",
                    "soft-inpainting")  # its filter needs more than 6 cores: the GPU machine has them
#: reForge's and Classic's tokenizer data (``ldm_patched/**/*_tokenizer`` without code) that SD1.5 and SDXL use.
LDM_PATCHED_TOKENIZERS = ("sd1_tokenizer",)
#: Repositories of the A1111 webui whose code writes the test checkpoints (ldm, sgm).
WRITER_REPOSITORIES = ("stable-diffusion-stability-ai", "generative-models")


def pack_forge(forge: Path, writer_repositories: Path, dst: Path):
    """Forge and Neo (a ``backend/`` with the model families' configs) or reForge and Classic (``ldm_patched/``,
    the webui's own ``repositories/``): the code, the built-in SAG, the writer's ldm and sgm."""
    copy_code(forge, dst, WEBUI_SUFFIXES, WEBUI_SKIP_DIRS | {"extensions-builtin", "backend"}, WEBUI_SKIP_FILES)
    if (forge / "backend").is_dir():
        copy_code(forge / "backend", dst / "backend", WEBUI_SUFFIXES, {"huggingface"})
        for family in FORGE_MODEL_CONFIGS:
            copy_code(forge / "backend" / "huggingface" / family, dst / "backend" / "huggingface" / family,
                      WEBUI_SUFFIXES)
    for tokenizer in list(dst.glob("ldm_patched/**/*_tokenizer")):  # listed first: the loop deletes folders
        if tokenizer.name not in LDM_PATCHED_TOKENIZERS and not any(tokenizer.rglob("*.py")):
            shutil.rmtree(tokenizer)
    copy_repositories(forge, dst)
    for extension in FORGE_EXTENSIONS:
        if (forge / "extensions-builtin" / extension).is_dir():
            copy_code(forge / "extensions-builtin" / extension, dst / "extensions-builtin" / extension,
                      EXTENSION_SUFFIXES)
    for repository in WRITER_REPOSITORIES:
        copy_code(writer_repositories / repository, dst / "repositories" / repository, REPOSITORY_SUFFIXES)
    (dst / "localizations").mkdir(exist_ok=True)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(pins_file: Path) -> list[tuple[str, str, bool]]:
    """``(name, version, build_from_sdist)`` for each line ``name==version [# build ...]``."""
    pins = []
    for line in pins_file.read_text().splitlines():
        requirement, _, comment = line.partition("#")
        if requirement.strip():
            name, version = requirement.strip().split("==")
            pins.append((name, version, comment.strip().startswith("build")))
    return pins


def cached_wheel(name: str, version: str) -> Path | None:
    for wheel in WHEEL_CACHE.glob("*.whl"):
        dist, wheel_version = wheel.name.split("-")[:2]
        if normalize(dist) == normalize(name) and wheel_version == version:
            return wheel
    return None


def pip(*args: str):
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def pack_wheels(dst: Path, pins_files: list[Path]):
    """Fill the cache with the missing pins of ``pins_files`` (a later file's pin replaces an earlier one of the
    same package), then copy every pinned wheel into ``dst``."""
    pins = list({normalize(pin[0]): pin for pins_file in pins_files for pin in read_pins(pins_file)}.values())
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    missing = [(f"{name}=={version}", build) for name, version, build in pins if not cached_wheel(name, version)]
    if to_download := [requirement for requirement, build in missing if not build]:
        pip("download", "--no-deps", *PLATFORM_ARGS, "-d", str(WHEEL_CACHE), *to_download)
    if to_build := [requirement for requirement, build in missing if build]:
        pip("wheel", "--no-deps", "--no-binary=:all:", "-w", str(WHEEL_CACHE), *to_build)
    dst.mkdir(parents=True)
    for name, version, _ in pins:
        wheel = cached_wheel(name, version)
        if wheel is None:
            sys.exit(f"no wheel for {name}=={version} in {WHEEL_CACHE}")
        shutil.copy2(wheel, dst / wheel.name)


def size(paths) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file())


def tree_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def travelling_files(out: Path) -> set[Path]:
    """Tracked and untracked-not-ignored files of the repository, plus everything under ``out``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    return {REPO_ROOT / name for name in listed.split("\0") if name} | set(tree_files(out))


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--webui", type=Path, default=os.environ.get("SD_WEBUI_PATH"),
                        help="webui v1.10.1 checkout with repositories/ (default: $SD_WEBUI_PATH)")
    parser.add_argument("--clip", type=Path, help="openai/CLIP checkout (holds clip/), for the webui, reForge and Classic")
    parser.add_argument("--forge", type=Path, help="a Forge-family checkout to pack instead of the webui")
    parser.add_argument("--writer-repositories", type=Path, help="with --forge: the webui's repositories/ (ldm, sgm)")
    parser.add_argument("--pins", type=Path, action="append", help="the wheels to pack, one or more files "
                        "(default: device_wheels.txt, or with --forge device_wheels_forge.txt; for Forge Neo "
                        "device_wheels_neo.txt)")
    parser.add_argument("--extension", type=Path, action="append", default=[], help="extension folder to copy")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".gpu", help="output folder (default: .gpu)")
    args = parser.parse_args()

    if not (args.forge and args.writer_repositories) and not (args.webui and args.clip):
        parser.error("give --webui and --clip, or --forge and --writer-repositories")
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    host = "forge" if args.forge else "webui"
    if args.forge:
        pack_forge(args.forge, args.writer_repositories, out / "forge")
    else:
        pack_webui(args.webui, out / "webui")
    if args.clip:
        copy_code(args.clip / "clip", out / "site" / "clip", (".py", ".txt.gz"))
    pack_wheels(out / "wheels", args.pins or [PINS_FILES[host]])
    for extension in args.extension:
        copy_code(extension, out / "extensions" / extension.resolve().name, EXTENSION_SUFFIXES)

    for part in (host, "wheels", "site", "extensions"):
        print(f"{part:>10}: {mib(size(tree_files(out / part)))}")
    total = size(travelling_files(out))
    print(f"{'.gpu':>10}: {mib(size(tree_files(out)))}")
    print(f"travelling tree: {mib(total)} (limit {LIMIT_MIB} MiB, aim under {TARGET_MIB})")
    if total > LIMIT_MIB * 2**20:
        print("over the limit", file=sys.stderr)
        return 1
    if total > TARGET_MIB * 2**20:
        print("warning: less than 4 MiB of margin left", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
