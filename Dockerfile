# GPU image for the pipeline's GPU-bound steps (and `dagster dev` if you like): NVIDIA PyTorch base,
# the project installed with its GPU extra. torch comes from the base image, so pip keeps it.
# Build: docker build -t embed-pipeline:latest .
FROM nvcr.io/nvidia/pytorch:25.01-py3

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMBED_ARTIFACTS_DIR=/data/artifacts \
    EMBED_CORPORA_DIR=/data/corpora \
    DAGSTER_HOME=/opt/dagster/home

WORKDIR /opt/embed_pipeline
COPY pyproject.toml README.md ./
COPY embed_pipeline ./embed_pipeline
RUN pip install --no-cache-dir ".[gpu]" \
 && mkdir -p "$DAGSTER_HOME" /data/artifacts /data/corpora
COPY dagster.yaml workspace.yaml ./
RUN cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

CMD ["dagster", "dev", "-h", "0.0.0.0", "-p", "3000"]
