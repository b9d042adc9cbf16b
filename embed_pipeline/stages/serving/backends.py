"""What the service needs from a model, and how a model folder becomes one.

The service tokenizes requests itself (it must count tokens, apply NIM truncation and reject over-long inputs
before anything runs), so a backend only has to turn already-tokenized ids into vectors. Two implementations:

- ONNX Runtime (``embed_pipeline.stages.export.onnx_runtime.OnnxEncoder``) for an ``onnx_model`` export folder
  (``manifest.json`` + ``model*.onnx``): no PyTorch at inference, CUDA/TensorRT execution providers on GPU.
- PyTorch (:class:`~embed_pipeline.stages.serving.torch_backend.TorchBackend`) for a Hugging Face or
  sentence-transformers folder such as ``finetuned_model``'s output, so a model can be served before export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.settings import resolve_model_path
from embed_pipeline.stages.export.manifest import OnnxModel
from embed_pipeline.stages.finetuned_model import FinetunedModel

BackendKind = Literal["onnx", "torch"]


@runtime_checkable
class EmbeddingBackend(Protocol):
    """A loaded model the service can call from one inference thread.

    ``config`` carries the prefixes (``query_prefix``/``passage_prefix``), the max lengths per kind and whether
    outputs are L2-normalised; ``embed_token_ids`` pads ids that already include prefix and special tokens, runs
    the model, pools and normalises, and returns float32 ``[len(batch), dimension]``.
    """

    config: EncoderConfig
    tokenizer: object

    @property
    def dimension(self) -> int: ...

    def embed_token_ids(self, batch: list[list[int]]) -> np.ndarray: ...


def detect_backend(model_path: str | Path) -> BackendKind:
    """'onnx' for an export folder (manifest.json and a .onnx file), 'torch' for a Hugging Face model folder."""
    path = Path(model_path).expanduser()
    if not path.exists():
        resolved = resolve_model_path(str(model_path))  # bundled aliases such as all-MiniLM-L6-v2
        if not Path(resolved).is_dir():
            raise ValueError(
                f"Model {str(model_path)!r} is not a folder. Point --model at an onnx_model export folder "
                "(manifest.json + model.onnx) or a Hugging Face model folder (config.json)."
            )
        path = Path(resolved)
    if not path.is_dir():
        raise ValueError(f"Model path {path} is a file; point --model at the folder that holds it.")
    if OnnxModel(dir=path).exists() and any(path.glob("*.onnx")):
        return "onnx"
    if FinetunedModel(dir=path).exists():  # any Hugging Face model folder (config.json)
        return "torch"
    raise ValueError(
        f"{path} is neither an ONNX export (manifest.json + model.onnx) nor a Hugging Face model folder "
        "(config.json). Point --model at the output of the onnx_model or finetuned_model asset."
    )


def load_backend(
    model_path: str | Path,
    backend: Literal["auto", "onnx", "torch"] = "auto",
    variant: str = "fp32",
    providers: list[str] | None = None,
    device: str | None = None,
) -> EmbeddingBackend:
    """Load ``model_path`` once; ``backend='auto'`` picks by the folder's files (see :func:`detect_backend`)."""
    kind = detect_backend(model_path) if backend == "auto" else backend
    path = Path(model_path).expanduser()
    if not path.exists():
        path = Path(resolve_model_path(str(model_path)))
    if kind == "onnx":
        try:
            from embed_pipeline.stages.export.onnx_runtime import OnnxEncoder
        except ImportError as exc:
            raise RuntimeError(
                f"The ONNX backend needs embed_pipeline.stages.export.onnx_runtime ({exc}). Use --backend torch "
                "with a Hugging Face model folder instead."
            ) from exc
        return OnnxEncoder(path, variant=variant, providers=providers)
    from embed_pipeline.stages.serving.torch_backend import TorchBackend

    return TorchBackend(path, device=device)


def describe_backend(backend: EmbeddingBackend) -> str:
    """One line for the startup log: implementation, device or providers, dimension."""
    where = getattr(backend, "providers", None) or getattr(backend, "device", None)
    return f"{type(backend).__name__} (dimension {backend.dimension}, {where or 'default device'})"
