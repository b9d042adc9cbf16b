"""The output folder: Hugging Face weights and tokenizer, sentence-transformers files, history and model card."""

from __future__ import annotations

import json
from pathlib import Path

from embed_pipeline.core.artifacts import atomic_path
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.model_loading import copy_code_files
from embed_pipeline.stages.model_card import HISTORY_FILE, write_model_card
from embed_pipeline.stages.training.config import TrainingHistory
from embed_pipeline.stages.training.lora import save_plain

ST_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "last_token": "pooling_mode_lasttoken",
}
ALL_ST_POOLING_KEYS = [
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
]


def write_sentence_transformers_files(out_dir: Path, encoder_config: EncoderConfig, dimension: int) -> None:
    """The sentence-transformers layout around a Hugging Face checkpoint in ``out_dir`` (Transformer at the root).

    Written in the long-standing v2-v5 format, which sentence-transformers 6 also reads, so the folder loads in
    every version the project supports.
    """
    out_dir = Path(out_dir)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if encoder_config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out_dir / "2_Normalize").mkdir(parents=True, exist_ok=True)
    pooling = {"word_embedding_dimension": dimension}
    pooling |= {key: key == ST_POOLING_KEYS[encoder_config.pooling] for key in ALL_ST_POOLING_KEYS}
    pooling["include_prompt"] = True
    (out_dir / "1_Pooling").mkdir(parents=True, exist_ok=True)
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        # One length for both kinds: sentence-transformers has a single max_seq_length.
        "sentence_bert_config.json": {
            "max_seq_length": max(encoder_config.query_max_length, encoder_config.passage_max_length),
            "do_lower_case": False,
        },
        "config_sentence_transformers.json": {
            "prompts": {"query": encoder_config.query_prefix, "passage": encoder_config.passage_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, obj in files.items():
        (out_dir / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def save_checkpoint(encoder: Encoder, out_dir: Path, history: TrainingHistory) -> None:
    """Write model, tokenizer, sentence-transformers files, history and card to a temp folder, then swap it in."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        model = encoder.model
        trained_with = {k: getattr(model.config, k) for k in encoder.original_values}
        try:  # the saved configuration is the model's own (training-only changes such as attention dropout undone)
            for key, value in encoder.original_values.items():
                setattr(model.config, key, value)
            save_plain(model, tmp)  # LoRA adapters merged: a plain model
        finally:
            for key, value in trained_with.items():
                setattr(model.config, key, value)
        encoder.tokenizer.save_pretrained(tmp)
        copy_code_files(encoder.model_path, tmp)  # a custom-code model's files, so the folder loads on its own
        write_sentence_transformers_files(tmp, encoder.config, encoder.dimension)
        (tmp / HISTORY_FILE).write_text(history.model_dump_json(indent=2) + "\n", encoding="utf-8")
        write_model_card(tmp)
        for f in tmp.rglob("*"):  # some writers create 0600 files; a serving container may run as another user
            f.chmod(f.stat().st_mode | (0o055 if f.is_dir() else 0o044))
