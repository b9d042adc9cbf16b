"""How a model wants to be used: pooling, normalisation, prefixes and max length from its own metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from embed_pipeline.core.model_defaults import RECIPE_DEFAULTS, resolve_encoder_fields
from embed_pipeline.defs.resources import BaseEncoder


def test_minilm_is_used_without_prefixes_at_256_tokens() -> None:
    values, sources = resolve_encoder_fields("sentence-transformers/all-MiniLM-L6-v2", {})
    assert values == {
        "pooling": "mean",
        "normalize": True,
        "query_prefix": "",
        "passage_prefix": "",
        "query_max_length": 256,
        "passage_max_length": 256,
    }
    assert sources["query_prefix"].startswith("the model's config_sentence_transformers.json (no prompts")
    assert sources["query_max_length"] == "the model's sentence_bert_config.json"
    assert sources["pooling"] == "the model's 1_Pooling/config.json"


def test_a_model_without_metadata_gets_the_recipe_and_the_user_wins(tiny_model_dir: Path) -> None:
    values, sources = resolve_encoder_fields(str(tiny_model_dir), {"query_max_length": 64})
    assert values == RECIPE_DEFAULTS | {"query_max_length": 64}
    assert sources["query_max_length"] == "set by you" and sources["passage_prefix"] == "recipe default"


def test_prompts_cls_pooling_and_no_normalize_are_read(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (model / "pool").mkdir()
    (model / "pool" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (model / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "Represent this query: ", "document": "doc: "}})
    )
    values, sources = resolve_encoder_fields(str(model), {})
    assert (values["pooling"], values["normalize"]) == ("cls", False)
    assert (values["query_prefix"], values["passage_prefix"]) == ("Represent this query: ", "doc: ")
    assert values["query_max_length"] == 512  # no sentence_bert_config.json: the recipe's
    assert sources["pooling"] == "the model's pool/config.json"
    # The resource resolves the same way, and the fine-tuned folder is then encoded like its base.
    encoder = BaseEncoder(model=str(model))
    assert encoder.config().query_prefix == "Represent this query: "
    assert encoder.config("/elsewhere").model == "/elsewhere" and encoder.config("/elsewhere").pooling == "cls"
    assert BaseEncoder(model=str(model), pooling="mean").config().pooling == "mean"
