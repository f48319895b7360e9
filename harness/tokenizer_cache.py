"""Offline Hugging Face cache with the CLIP tokenizer and text-model configs.

The webui builds its CLIP text encoders with ``CLIPTokenizer.from_pretrained`` and
``CLIPTextModel.from_pretrained`` (weights come from the checkpoint), so with
``HF_HUB_OFFLINE=1`` it needs vocab, merges, tokenizer and model configs in a hub
cache. We derive vocab.json/merges.txt from the BPE list that open_clip and
openai-clip ship (``bpe_simple_vocab_16e6.txt.gz``), which is the same vocabulary.

Two repos are written:

* ``openai/clip-vit-large-patch14`` with the real CLIP ViT-L/14 config;
* :data:`TINY_CLIP_REPO`, the same tokenizer with a tiny text model, which the
  test checkpoints' yaml configs name as ``version``.

Standard library only; usable from any interpreter.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

CLIP_L_REPO = "openai/clip-vit-large-patch14"
TINY_CLIP_REPO = "sd-webui-sag-tests/clip-text-tiny"

#: Text-model sizes of :data:`TINY_CLIP_REPO` (hidden size = cross-attention width).
TINY_CLIP_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3}

VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def vocab_and_merges(bpe_path: str | os.PathLike) -> tuple[dict[str, int], list[str]]:
    """Token->id map and merge lines, exactly as CLIP's tokenizer builds them."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


def _special(content: str, typed: bool = False) -> dict:
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if typed else token


def text_config(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12) -> dict:
    return {
        "model_type": "clip_text_model", "vocab_size": VOCAB_SIZE, "max_position_embeddings": 77,
        "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads, "num_hidden_layers": num_hidden_layers,
        "projection_dim": hidden_size, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "bos_token_id": VOCAB_SIZE - 2, "eos_token_id": VOCAB_SIZE - 1, "pad_token_id": 1,
    }


def _model_config(text: dict) -> dict:
    """A ``CLIPModel`` config; ``CLIPTextModel.from_pretrained`` reads its ``text_config``."""
    vision = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
              "num_attention_heads": 16, "num_hidden_layers": 24, "image_size": 224, "patch_size": 14,
              "projection_dim": text["projection_dim"], "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": text["projection_dim"],
            "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
            "transformers_version": "4.30.2", "text_config": text, "vision_config": vision}


def _write_repo(hub_dir: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` as one snapshot of ``repo_id`` in hub-cache layout; return the snapshot dir."""
    repo_dir = hub_dir / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    revision = digest.hexdigest()
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    # Optional files the tokenizer asks for: record them as known-absent.
    no_exist = repo_dir / ".no_exist" / revision
    no_exist.mkdir(parents=True, exist_ok=True)
    for name in ("added_tokens.json", "tokenizer.json"):
        (no_exist / name).touch()
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def build_tokenizer_cache(hf_home: str | os.PathLike, bpe_path: str | os.PathLike) -> Path:
    """Create an offline HF cache under ``hf_home`` (use it as ``HF_HOME``); return ``hf_home``.

    ``bpe_path`` is open_clip's or openai-clip's ``bpe_simple_vocab_16e6.txt.gz``.
    """
    hf_home = Path(hf_home)
    vocab, merges = vocab_and_merges(bpe_path)
    special = {"bos_token": _special(BOS), "eos_token": _special(EOS), "unk_token": _special(EOS), "pad_token": EOS}
    tokenizer_config = {"bos_token": _special(BOS, True), "eos_token": _special(EOS, True),
                        "unk_token": _special(EOS, True), "pad_token": EOS, "tokenizer_class": "CLIPTokenizer",
                        "model_max_length": 77, "do_lower_case": True, "errors": "replace",
                        "add_prefix_space": False}
    shared = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode(),
        "special_tokens_map.json": json.dumps(special, indent=2).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode(),
    }
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    (hf_home / "hub" / "version.txt").write_text("1")  # transformers' cache-layout marker
    for repo_id, text in ((CLIP_L_REPO, text_config()), (TINY_CLIP_REPO, text_config(**TINY_CLIP_TEXT))):
        config = json.dumps(_model_config(text), indent=2).encode()
        _write_repo(hf_home / "hub", repo_id, {**shared, "config.json": config})
    return hf_home


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=build_tokenizer_cache.__doc__)
    parser.add_argument("hf_home")
    parser.add_argument("bpe_path")
    args = parser.parse_args()
    print(build_tokenizer_cache(args.hf_home, args.bpe_path))
