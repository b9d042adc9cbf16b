"""Every load of a model, tokenizer or configuration goes through here, so a repository's own code runs only
when the user said so.

Some models ship their modeling code (``auto_map`` in ``config.json`` or ``tokenizer_config.json``): the recipe's
``nvidia/llama-nemotron-embed-1b-v2`` is a Llama with bidirectional attention in ``llama_bidirectional_model.py``.
Loading it runs that file, which is the user's security decision: ``trust_remote_code`` on the encoder config (the
``base_encoder`` resource, the Launchpad) or ``EMBED_TRUST_REMOTE_CODE=1``, off by default.

The check runs before transformers sees the folder, so a refusal is immediate and names the model and the setting;
transformers is always given an explicit ``trust_remote_code`` and so never stops to ask on standard input. A model
with an ``auto_map`` is refused even when transformers has a built-in class of the same ``model_type``: that class
would load the weights into a different computation (a causal Llama instead of a bidirectional one) without a word.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

ENV_VAR = "EMBED_TRUST_REMOTE_CODE"
_TRUE = {"1", "true", "yes", "on"}
_METADATA_FILES = ("config.json", "tokenizer_config.json")


class RemoteCodeRefused(RuntimeError):
    """The model needs its own code to load and running it was not allowed."""


def env_allows_remote_code() -> bool:
    """Whether ``EMBED_TRUST_REMOTE_CODE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _TRUE


def allowed(setting: bool | None = None) -> bool:
    """The configured setting, or the environment variable (either one allows)."""
    return bool(setting) or env_allows_remote_code()


def remote_code_entries(folder: str | Path, tokenizer_only: bool = False) -> dict[str, str]:
    """``auto_map`` entries (``"AutoModel" -> "file.Class"``) of a local model folder; empty for hub ids.
    ``tokenizer_only``: those a tokenizer load runs (a tokenizer named by class in ``tokenizer_config.json`` loads
    without the model's code, as the tokenizer of an ONNX export does)."""
    folder = Path(folder)
    entries: dict[str, str] = {}
    for name in _METADATA_FILES[1:] if tokenizer_only else _METADATA_FILES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, dict):
            for key, value in auto_map.items():
                # tokenizer auto_map values are [slow, fast] pairs
                shown = value if isinstance(value, str) else ", ".join(str(v) for v in value if v)
                entries[str(key)] = shown
    return entries


def local_folder(path: str | Path) -> Path | None:
    """``path`` itself when it is a folder, else the Hugging Face cache's snapshot of that hub id (None: neither)."""
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), local_files_only=True))
    except Exception:  # not a hub id, or not in the cache: transformers reports it when it tries
        return None


def check_remote_code(model: str, path: str | Path, setting: bool | None = None, tokenizer_only: bool = False) -> bool:
    """The ``trust_remote_code`` to pass to transformers for ``path``; raises ``RemoteCodeRefused`` when the model
    (or, ``tokenizer_only``, its tokenizer) needs its own code and neither the setting nor the environment allows
    it."""
    trust = allowed(setting)
    folder = local_folder(path)
    entries = remote_code_entries(folder, tokenizer_only) if folder is not None else {}
    if entries and not trust:
        shown = "; ".join(f"{k} -> {v}" for k, v in sorted(entries.items()))
        raise RemoteCodeRefused(
            f"Model {model!r} ({folder}) ships its own Python code ({shown}), which runs when it loads. Nothing was "
            f"run. If you trust this repository, set {ENV_VAR}=1 (or trust_remote_code: true on the base_encoder "
            "resource in the Launchpad; --trust-remote-code for embed-pipeline serve and the training and export "
            "commands) and run again."
        )
    return trust


def load_config(path: str | Path, trust: bool, **kwargs: Any):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust, **kwargs)


def load_tokenizer(path: str | Path, trust: bool, **kwargs: Any):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust, **kwargs)


def load_model(path: str | Path, trust: bool, **kwargs: Any):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), trust_remote_code=trust, **kwargs)


def copy_code_files(source: str | Path, dest: str | Path) -> list[str]:
    """Copy the Python files a model's ``auto_map`` needs from ``source`` into ``dest`` (those not already there),
    so ``dest`` loads on its own. Returns the names copied."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir() or not remote_code_entries(source):
        return []
    copied = []
    for file in sorted(source.glob("*.py")):
        target = dest / file.name
        if not target.exists():
            shutil.copy2(file, target)
            copied.append(file.name)
    return copied
