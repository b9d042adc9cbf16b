"""``manifest.json`` of an ONNX export: what a runtime needs besides the graph (prefixes, lengths, pooling, files).

The graph already pools and normalises; the manifest records how texts become token ids (prefix per kind, max
length per kind) so an ONNX Runtime or TensorRT encoder reproduces ``Encoder.encode`` without the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import write_json
from embed_pipeline.core.encoder import EncoderConfig, Pooling
from embed_pipeline.stages.finetuned_model import FinetunedModel

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
OUTPUT_NAME = "embeddings"
Variant = Literal["fp32", "int8", "fp16"]
PORTABLE_FILE = "model.onnx"  # standard ONNX operators only: TensorRT and other runtimes read this one
FUSED_FILE = "model.fused.onnx"  # ONNX Runtime's fused fp32 graph (contrib operators): the fp32 variant when present
VARIANT_FILES: dict[str, str] = {"fp32": PORTABLE_FILE, "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


class OnnxModel(Artifact):
    """The ``onnx_model`` folder: the graphs (``VARIANT_FILES``), the tokenizer, ``manifest.json`` (what is where,
    how it embeds) and ``parity.json`` (every served variant measured against the checkpoint)."""

    asset = "onnx_model"
    marker = MANIFEST_FILE
    PARITY: ClassVar[str] = "parity.json"
    INPUTS: ClassVar[str] = "inputs.json"  # what the export was made from, and its result: a refresh may keep it


class OnnxManifest(BaseModel):
    """Everything about an export that is not in the graph."""

    format_version: int = Field(FORMAT_VERSION, description="Bumped when a reader of an older version would fail.")
    source_model: str = Field(description="Model folder (or hub id) the graph was exported from.")
    pooling: Pooling = Field(description="Token pooling done inside the graph.")
    normalize: bool = Field(description="Whether the graph L2-normalises its output.")
    query_prefix: str
    passage_prefix: str
    query_max_length: int = Field(description="Tokens kept per query (prefix and special tokens included).")
    passage_max_length: int = Field(description="Tokens kept per passage (prefix and special tokens included).")
    batch_size: int = Field(64, description="Most texts per forward pass at inference (EncoderConfig.batch_size).")
    max_batch_tokens: int = Field(4096, description="Most padded tokens per forward pass (EncoderConfig).")
    dimension: int = Field(description="Width of the `embeddings` output.")
    opset: int
    inputs: list[str] = Field(description="Graph inputs, int64 [batch, sequence] each.")
    output: str = Field(OUTPUT_NAME, description="The single graph output, float32 [batch, dimension].")
    portable_model: str = Field(
        PORTABLE_FILE, description="fp32 graph with standard ONNX operators only: the input for TensorRT."
    )
    variants: dict[str, str] = Field(description="Variant (fp32, int8, fp16) -> file name ONNX Runtime loads.")
    fused_variants: list[str] = Field(
        default_factory=list,
        description="Variants built from ONNX Runtime's fused graph (contrib operators: ONNX Runtime only).",
    )
    dropped_variants: dict[str, str] = Field(
        default_factory=dict,
        description="Variants exported but removed because they failed their parity gate -> why (drop_variants).",
    )
    int8_per_channel: bool | None = Field(None, description="Per-channel weight scales in the int8 variant.")
    matryoshka_dims: list[int] = Field(default_factory=list, description="Dimensions the model was trained at.")
    trust_remote_code: bool = Field(
        False, description="The source model ran its own code (auto_map) at export, with the user's permission."
    )
    remote_code_files: list[str] = Field(
        default_factory=list, description="The model's own code files copied beside the graph (with config.json)."
    )
    export_seconds: float
    versions: dict[str, str] = Field(description="torch, transformers, onnx, onnxruntime versions at export.")

    def encoder_config(self, model: str, trust_remote_code: bool = False) -> EncoderConfig:
        """The ``EncoderConfig`` this export reproduces, with ``model`` pointing at ``model``. Whether that model's
        own code may run is the caller's setting, never the manifest's record of the export."""
        return EncoderConfig(
            model=model,
            pooling=self.pooling,
            normalize=self.normalize,
            query_prefix=self.query_prefix,
            passage_prefix=self.passage_prefix,
            query_max_length=self.query_max_length,
            passage_max_length=self.passage_max_length,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            trust_remote_code=trust_remote_code,
        )


def _how_to_export(folder: Path) -> str:
    return (
        "Materialize the onnx_model asset first, or run `python -m embed_pipeline.stages.export.onnx_export "
        f"--model <fine-tuned model folder> --out {folder}`."
    )


def read_manifest(folder: Path) -> OnnxManifest:
    """Read and validate ``folder/manifest.json``; a missing or foreign folder raises ``FileNotFoundError``."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: ONNX export folder not found. {_how_to_export(folder)}")
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST_FILE}, so not an ONNX export. {_how_to_export(folder)}")
    try:
        manifest = OnnxManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid export manifest ({exc}). {_how_to_export(folder)}") from exc
    if manifest.format_version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.format_version} is newer than this code reads ({FORMAT_VERSION}). "
            "Upgrade embed_pipeline, or re-export with this version."
        )
    return manifest


def drop_variants(folder: Path, reasons: dict[str, str]) -> OnnxManifest:
    """Remove ``reasons``' variants from an export (their graph files, unless another entry uses the same file) and
    record why in the manifest, so nothing serves a variant that failed its parity gate."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    variants = {v: f for v, f in manifest.variants.items() if v not in reasons}
    kept_files = {*variants.values(), manifest.portable_model}
    for variant in reasons:
        name = manifest.variants.get(variant)
        if name and name not in kept_files:
            for path in (folder / name, folder / f"{name}.data"):
                path.unlink(missing_ok=True)
    updated = manifest.model_copy(
        update={
            "variants": variants,
            "fused_variants": [v for v in manifest.fused_variants if v in variants],
            "dropped_variants": {**manifest.dropped_variants, **reasons},
        }
    )
    write_json(folder / MANIFEST_FILE, updated.model_dump(mode="json"))
    return updated


def variant_path(folder: Path, manifest: OnnxManifest, variant: str) -> Path:
    """The graph file of ``variant``; raises with the variants that exist when it is not part of the export."""
    folder = Path(folder)
    if variant not in manifest.variants:
        raise FileNotFoundError(
            f"{folder}: variant {variant!r} was not exported (available: {sorted(manifest.variants)}). Re-export "
            f"with it enabled (OnnxExportConfig int8=True / fp16=True; CLI --fp16), or pick another variant."
        )
    path = folder / manifest.variants[variant]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in {MANIFEST_FILE} but missing. {_how_to_export(folder)}")
    return path


def checkpoint_history(model_dir: Path) -> dict:
    """``training_history.json`` of a fine-tuned folder as a dict; ``{}`` when absent or unreadable."""
    return FinetunedModel(dir=model_dir).history_dict()


def checkpoint_encoder_config(model_dir: Path) -> EncoderConfig | None:
    """The ``EncoderConfig`` a fine-tuned folder was trained with, ``model`` set to the folder; None if unknown."""
    raw = checkpoint_history(model_dir).get("encoder_config")
    if not isinstance(raw, dict):
        return None
    try:
        return EncoderConfig.model_validate({**raw, "model": str(model_dir)})
    except ValidationError:
        return None
