"""``OnnxEncoder``: an ``onnx_model`` export run by ONNX Runtime, behind ``Encoder.encode``'s interface.

PyTorch never runs here (it is imported, since ``EncoderConfig`` lives beside the PyTorch encoder). Providers
default to CUDA then CPU, whichever this onnxruntime build has. TensorRT's execution provider is used only when
asked for (it compiles engines per shape range on first use; :mod:`.tensorrt_engine` prebuilds one instead), and
then the fp32 variant is the portable ``model.onnx``, since TensorRT cannot run ONNX Runtime's fused operators.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from embed_pipeline.core.reuse import file_sha256_many
from embed_pipeline.stages.export.manifest import read_manifest, variant_path
from embed_pipeline.stages.export.token_encoder import TokenizedEncoder

_log = logging.getLogger("embed_pipeline.export")
DEFAULT_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def default_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware), as torch counts them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEncoder(TokenizedEncoder):
    """Encode with an ONNX export folder (``manifest.json``, ``model*.onnx``, tokenizer files)."""

    def __init__(
        self,
        folder: Path,
        variant: Literal["fp32", "int8", "fp16"] = "fp32",
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        manifest = read_manifest(folder)
        path = variant_path(folder, manifest, variant)
        super().__init__(folder, manifest)
        self.variant = variant
        available = ort.get_available_providers()
        wanted = providers or DEFAULT_PROVIDERS
        chosen = [p for p in wanted if p in available]
        if not chosen:
            raise ValueError(
                f"None of the execution providers {wanted} is available in this onnxruntime build "
                f"(available: {available}). Install onnxruntime-gpu for CUDA/TensorRT, or pass "
                "providers=['CPUExecutionProvider']."
            )
        if providers and len(chosen) < len(providers):
            _log.warning(f"execution providers {sorted(set(providers) - set(chosen))} not available; using {chosen}")
        if variant == "fp32" and chosen[0] == "TensorrtExecutionProvider":
            path = folder / manifest.portable_model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or default_threads()
        options.log_severity_level = 3  # unused-initializer notes after fusion are expected, not actionable
        self.session = ort.InferenceSession(str(path), options, providers=chosen)
        self.providers: list[str] = self.session.get_providers()
        self.path = path
        self._feed_names = [i.name for i in self.session.get_inputs()]

    def fingerprint(self) -> str:
        """The graph's bytes with its external weights (a graph over 2 GB keeps them beside it, in files the graph
        names: the graph file alone would be the same for two checkpoints of one architecture), its tokenizer's,
        the execution providers and ONNX Runtime's version (their numerics differ slightly)."""
        import onnxruntime as ort

        weights = sorted(p for p in self.folder.glob(f"{self.path.name}*") if p != self.path)  # e.g. model.onnx.data
        files = [self.path, *weights, *sorted(self.folder.glob("tokenizer*")), *sorted(self.folder.glob("*.model"))]
        return file_sha256_many(files, extra=f"{','.join(self.providers)} onnxruntime {ort.__version__}")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run([self.manifest.output], {name: feeds[name] for name in self._feed_names})[0]
        return out.astype(np.float32, copy=False)
