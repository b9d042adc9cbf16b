"""TensorRT 10 engine (``model.plan``) from an ONNX export, and ``TensorRTEncoder`` to run it.

The engine is built from ``model.onnx`` (the export's portable graph: plain ONNX operators) with one optimisation
profile over batch and sequence length, up to the export's max length (the trained length; 512 by default: the
reference recipe stops at 256, we cover what the model was trained for). With ``fp16`` the transformer runs in
half precision while pooling and L2 normalisation stay fp32 (``OBEY_PRECISION_CONSTRAINTS``; the layers are found
by :func:`~.graph_tail.tensorrt_fp32_layers`). Engines are specific to the GPU model and TensorRT version they were
built with: ``engine.json`` records both. Needs the ``tensorrt`` package and an NVIDIA GPU
(:func:`tensorrt_unavailable_reason` says why not).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, Field, model_validator

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import atomic_path, write_json
from embed_pipeline.core.model_loading import check_remote_code, load_tokenizer
from embed_pipeline.stages.export.graph_tail import GraphNode, tensorrt_fp32_layers
from embed_pipeline.stages.export.manifest import OnnxManifest, read_manifest
from embed_pipeline.stages.export.token_encoder import TokenizedEncoder

_log = logging.getLogger("embed_pipeline.export")
ENGINE_FILE = "model.plan"
ENGINE_MANIFEST = "engine.json"
ENGINE_FORMAT_VERSION = 1


class TensorRTEngine(Artifact):
    """The ``tensorrt_engine`` folder: ``model.plan``, ``engine.json`` (its manifest) and ``parity.json`` (the
    engine against the checkpoint, measured where the engine was built)."""

    asset = "tensorrt_engine"
    marker = ENGINE_MANIFEST
    PARITY: ClassVar[str] = "parity.json"


def tensorrt_unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built or run here, or None when it can."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        return (
            f"the `tensorrt` Python package cannot be imported ({exc}); install it with "
            "`pip install 'tensorrt>=10'` (or the project's [gpu] extra) on a machine with an NVIDIA GPU"
        )
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        return f"tensorrt {trt.__version__} is older than 10, whose API this code uses; pip install 'tensorrt>=10'"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT runs only on NVIDIA GPUs"
    return None


class TensorRTConfig(BaseModel):
    """How the engine is built."""

    fp16: bool = Field(True, description="Run the transformer in fp16 (pooling and normalisation stay fp32).")
    min_batch: int = Field(1, ge=1, description="Smallest batch the engine accepts.")
    opt_batch: int = Field(32, ge=1, description="Batch size TensorRT tunes its kernels for.")
    max_batch: int = Field(128, ge=1, description="Largest batch the engine accepts; larger calls are split.")
    opt_length: int = Field(128, ge=1, description="Sequence length TensorRT tunes for (clipped to max_length).")
    max_length: int | None = Field(
        None, ge=8, description="Longest sequence; default: the export's max length (the trained length)."
    )
    workspace_gb: float = Field(8.0, gt=0, description="Scratch GPU memory TensorRT may use while building.")

    @model_validator(mode="after")
    def _ordered_batches(self) -> TensorRTConfig:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"batch sizes must satisfy min_batch <= opt_batch <= max_batch, got {self.min_batch}, "
                f"{self.opt_batch}, {self.max_batch}"
            )
        return self


class EngineManifest(BaseModel):
    """``engine.json``: the profile and build facts, plus the ONNX manifest (prefixes, lengths, pooling)."""

    format_version: int = ENGINE_FORMAT_VERSION
    onnx: OnnxManifest
    engine_file: str = ENGINE_FILE
    precision: str = Field(description="'fp16' (with fp32 tail) or 'fp32'.")
    profile: dict[str, dict[str, list[int]]] = Field(description="Input -> min/opt/max shapes.")
    max_batch: int
    max_length: int
    fp32_layers: list[str] = Field(default_factory=list, description="Layers pinned to fp32 in an fp16 engine.")
    tensorrt_version: str
    gpu: str
    build_seconds: float


class TensorRTResult(BaseModel):
    """What :func:`build_engine` wrote."""

    out_dir: Path
    engine_path: Path
    manifest_path: Path
    size_mb: float
    seconds: float
    precision: str
    profile: dict[str, dict[str, list[int]]]
    fp32_layers: int
    tensorrt_version: str
    gpu: str


def profile_shapes(config: TensorRTConfig, manifest: OnnxManifest) -> dict[str, dict[str, list[int]]]:
    """Input name -> {"min", "opt", "max"} shapes [batch, sequence] of the engine's optimisation profile."""
    max_length = config.max_length or max(manifest.query_max_length, manifest.passage_max_length)
    opt_length = min(config.opt_length, max_length)
    return {
        name: {
            "min": [config.min_batch, 1],
            "opt": [config.opt_batch, opt_length],
            "max": [config.max_batch, max_length],
        }
        for name in manifest.inputs
    }


def _network_layers(network, trt) -> list[GraphNode]:
    floats = {trt.float32, trt.float16}
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        layers.append(
            GraphNode(
                name=layer.name,
                op_type=layer.type.name,
                inputs=tuple(t.name for t in inputs if t is not None),
                outputs=tuple(t.name for t in outputs),
                float_outputs=all(t.dtype in floats for t in outputs),
            )
        )
    return layers


def _pin_fp32(network, names: list[str], trt) -> None:
    wanted = set(names)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in wanted:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def build_engine(
    onnx_dir: Path, out_dir: Path, config: TensorRTConfig, logger: logging.Logger | None = None
) -> TensorRTResult:
    """Build ``out_dir/model.plan`` from ``onnx_dir/model.onnx``; writes ``engine.json`` and the tokenizer too."""
    log = logger or _log
    reason = tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(f"Cannot build a TensorRT engine: {reason}. Serve the ONNX export with OnnxEncoder instead.")
    import tensorrt as trt
    import torch

    start = time.perf_counter()
    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    onnx_path = onnx_dir / manifest.portable_model  # plain ONNX operators; the fused graph has contrib ops
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: the export's portable graph is missing. Re-export {onnx_dir}.")
    shapes = profile_shapes(config, manifest)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # deprecated no-op in 10, required before
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads a model.onnx.data side file itself
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(
            f"TensorRT's ONNX parser rejected {onnx_path}: {errors}. Re-export with the default opset, or update "
            "TensorRT."
        )
    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gb * 2**30))
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
    build_config.add_optimization_profile(profile)
    fp32_layers: list[str] = []
    if config.fp16:
        build_config.set_flag(trt.BuilderFlag.FP16)
        build_config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        outputs = [network.get_output(i).name for i in range(network.num_outputs)]
        fp32_layers = tensorrt_fp32_layers(_network_layers(network, trt), outputs)
        _pin_fp32(network, fp32_layers, trt)
        log.info(f"TensorRT fp16 build; {len(fp32_layers)} pooling/normalisation layers pinned to fp32")
    log.info(f"building TensorRT engine from {onnx_path} with profile {shapes} (this takes minutes)")
    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise RuntimeError(
            "TensorRT could not build the engine (its log above says why). Common causes: workspace_gb too small "
            "for max_batch x max_length, or an unsupported operator; lower max_batch/max_length or raise workspace_gb."
        )
    gpu = torch.cuda.get_device_name()
    seconds = time.perf_counter() - start
    engine_manifest = EngineManifest(
        onnx=manifest,
        precision="fp16" if config.fp16 else "fp32",
        profile=shapes,
        max_batch=config.max_batch,
        max_length=shapes[manifest.inputs[0]]["max"][1],
        fp32_layers=fp32_layers,
        tensorrt_version=str(trt.__version__),
        gpu=gpu,
        build_seconds=round(seconds, 1),
    )
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as staged:
        staged.mkdir(parents=True)
        (staged / ENGINE_FILE).write_bytes(bytes(serialized))
        trust = check_remote_code(str(onnx_dir), onnx_dir, tokenizer_only=True)
        load_tokenizer(onnx_dir, trust).save_pretrained(staged)
        for name in manifest.remote_code_files + (["config.json"] if manifest.remote_code_files else []):
            if Path(name).name != name:  # plain file names only: a manifest must not reach outside its folder
                raise ValueError(f"{onnx_dir / 'manifest.json'}: remote_code_files entry {name!r} is not a file name.")
            shutil.copy2(onnx_dir / name, staged / name)  # the model's own code travels with the engine too
        write_json(staged / ENGINE_MANIFEST, engine_manifest.model_dump(mode="json"))
    engine_path = out_dir / ENGINE_FILE
    log.info(f"TensorRT engine written to {engine_path} in {seconds:.0f}s")
    return TensorRTResult(
        out_dir=out_dir,
        engine_path=engine_path,
        manifest_path=out_dir / ENGINE_MANIFEST,
        size_mb=round(engine_path.stat().st_size / 2**20, 2),
        seconds=round(seconds, 1),
        precision=engine_manifest.precision,
        profile=shapes,
        fp32_layers=len(fp32_layers),
        tensorrt_version=engine_manifest.tensorrt_version,
        gpu=gpu,
    )


def read_engine_manifest(folder: Path) -> EngineManifest:
    """``folder/engine.json``; raises with how to build one when it is missing."""
    path = Path(folder) / ENGINE_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {ENGINE_MANIFEST}, so not a TensorRT engine folder. Build one with "
            "embed_pipeline.stages.export.tensorrt_engine.build_engine(<onnx_model folder>, <out>, TensorRTConfig())."
        )
    return EngineManifest.model_validate_json(path.read_text(encoding="utf-8"))


class TensorRTEncoder(TokenizedEncoder):
    """Encode with a TensorRT engine folder; same ``encode``/``embed_token_ids`` as ``OnnxEncoder``."""

    def __init__(self, folder: Path, device: str | None = None) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise RuntimeError(f"Cannot run a TensorRT engine: {reason}.")
        import tensorrt as trt
        import torch

        folder = Path(folder)
        engine_manifest = read_engine_manifest(folder)
        super().__init__(folder, engine_manifest.onnx, max_batch=engine_manifest.max_batch)
        self.engine_manifest = engine_manifest
        limit = engine_manifest.max_length  # the profile's longest sequence: truncate there
        self.config = self.config.model_copy(
            update={
                "query_max_length": min(self.config.query_max_length, limit),
                "passage_max_length": min(self.config.passage_max_length, limit),
            }
        )
        self.device = torch.device(device or "cuda")
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self.engine = self._runtime.deserialize_cuda_engine((folder / engine_manifest.engine_file).read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"{folder / engine_manifest.engine_file}: TensorRT could not load the engine (built with TensorRT "
                f"{engine_manifest.tensorrt_version} on {engine_manifest.gpu}; this is TensorRT {trt.__version__} on "
                f"{torch.cuda.get_device_name(self.device)}). Engines only load where they were built: rebuild it here."
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._torch_dtypes = {n: self._torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in names}
        self.providers = [f"TensorRT {trt.__version__} ({engine_manifest.precision})"]

    @staticmethod
    def _torch_dtype(trt, torch, dtype):
        table = {trt.int32: torch.int32, trt.int64: torch.int64, trt.float32: torch.float32, trt.float16: torch.float16}
        return table[dtype]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            keep = []  # the device buffers must outlive the asynchronous execution
            for name in self._inputs:
                tensor = torch.from_numpy(feeds[name]).to(self.device, self._torch_dtypes[name]).contiguous()
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            shape = tuple(self.context.get_tensor_shape(self._output))
            out = torch.empty(shape, dtype=self._torch_dtypes[self._output], device=self.device)
            self.context.set_tensor_address(self._output, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for input shape {tuple(keep[0].shape)}.")
            stream.synchronize()
        return out.float().cpu().numpy()
