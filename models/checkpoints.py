"""Checkpoint folders (`config.json` + `*.safetensors`): reading and checking a checkpoint's config."""

from __future__ import annotations

import json
from pathlib import Path

from models.errors import InputError


def read_checkpoint_config(ckpt: Path, method: str, version: int, fix: str, version_key: str = "version",
                           files: tuple[str, str] = ("config.json", "model.safetensors")) -> dict:
    """The `config.json` of checkpoint folder `ckpt`, checked: both `files` exist, it reads, it is `method`'s
    and of format `version` (under `version_key`). Every failure is one InputError ending with `fix`."""
    ckpt = Path(ckpt)
    config = ckpt / files[0]
    if not all((ckpt / f).exists() for f in files):
        raise InputError(f"{ckpt} is not a {method} checkpoint (needs {' and '.join(files)}); {fix}")
    try:
        doc = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{config} is corrupt ({e}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("method") != method:
        raise InputError(f"{ckpt} holds a {doc.get('method') if isinstance(doc, dict) else None!r} checkpoint, "
                         f"not {method}")
    if doc.get(version_key) != version:
        raise InputError(f"{ckpt} is a {method} checkpoint of format {doc.get(version_key)} (this monodyn reads "
                         f"{version}); {fix}")
    return doc
