"""How a model wants to be used: pooling, normalisation, prefixes and max length from its own metadata.

A model trained with sentence-transformers says how it embeds: ``modules.json`` (is there a ``Normalize`` module?)
with its ``Pooling`` module's ``config.json`` (mean, CLS or last-token pooling), ``sentence_bert_config.json``
(``max_seq_length``) and ``config_sentence_transformers.json`` (its ``prompts``; no prompts means the model was
trained without prefixes). Using other values scores a model below what it can do: all-MiniLM-L6-v2 evaluated with
``"query: "``/``"passage: "`` prefixes and 512 tokens is not the model its authors measured.

A model without such metadata gets the reference recipe's values (``"query: "``/``"passage: "``, mean pooling,
L2 normalisation, 512 tokens). Values the user set win over both. Every resolved value records where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embed_pipeline.core.settings import resolve_model_path

RECIPE_DEFAULTS: dict[str, Any] = {
    "pooling": "mean",
    "normalize": True,
    "query_prefix": "query: ",
    "passage_prefix": "passage: ",
    "query_max_length": 512,
    "passage_max_length": 512,
}
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last_token",
}
_QUERY_PROMPTS = ("query", "search_query", "retrieval.query")
_PASSAGE_PROMPTS = ("passage", "document", "search_document", "corpus", "retrieval.passage")


def _read(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sentence_transformers_defaults(model: str) -> dict[str, tuple[Any, str]]:
    """``field -> (value, where it came from)`` for the fields the model's metadata decides (may be empty)."""
    folder = Path(resolve_model_path(model))
    if not folder.is_dir():
        return {}  # a hub id not on disk: nothing to read offline
    found: dict[str, tuple[Any, str]] = {}
    modules = _read(folder, "modules.json")
    if isinstance(modules, list):
        types = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
        found["normalize"] = ("Normalize" in types, "modules.json")
        pooling_module = types.get("Pooling")
        if pooling_module is not None:
            rel = f"{pooling_module.get('path') or '1_Pooling'}/config.json"
            pooling = _read(folder, rel)
            if isinstance(pooling, dict):
                modes = [mode for key, mode in _POOLING_KEYS.items() if pooling.get(key)]
                if len(modes) == 1:
                    found["pooling"] = (modes[0], rel)
    sbert = _read(folder, "sentence_bert_config.json")
    if isinstance(sbert, dict) and isinstance(sbert.get("max_seq_length"), int):
        length = sbert["max_seq_length"]
        found["query_max_length"] = found["passage_max_length"] = (length, "sentence_bert_config.json")
    st_config = _read(folder, "config_sentence_transformers.json")
    if isinstance(st_config, dict):
        prompts = st_config.get("prompts") if isinstance(st_config.get("prompts"), dict) else {}
        query = next((prompts[k] for k in _QUERY_PROMPTS if isinstance(prompts.get(k), str)), None)
        passage = next((prompts[k] for k in _PASSAGE_PROMPTS if isinstance(prompts.get(k), str)), None)
        where = "config_sentence_transformers.json prompts"
        if query is None and passage is None and not prompts:
            where = "config_sentence_transformers.json (no prompts: trained without prefixes)"
        found["query_prefix"] = (query or "", where)
        found["passage_prefix"] = (passage or "", where)
    return found


def resolve_encoder_fields(model: str, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Values for the fields of ``RECIPE_DEFAULTS``: ``given`` (not None) wins, then the model's metadata, then the
    recipe. Returns (values, field -> source)."""
    from_model = sentence_transformers_defaults(model)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, recipe in RECIPE_DEFAULTS.items():
        if given.get(name) is not None:
            values[name], sources[name] = given[name], "set by you"
        elif name in from_model:
            values[name], where = from_model[name]
            sources[name] = f"the model's {where}"
        else:
            values[name], sources[name] = recipe, "recipe default"
    return values, sources
