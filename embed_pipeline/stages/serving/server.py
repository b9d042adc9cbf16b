"""Run the embedding service: load the model once, then serve it with uvicorn.

``python -m embed_pipeline.stages.serving.server --model PATH`` and ``embed-pipeline serve --model PATH`` are the
same command (the CLI reuses :func:`add_serve_arguments` and :func:`settings_from_args`). The API key is read
from ``EMBED_SERVE_API_KEY``; ``--api-key`` exists for quick local trials, but anything on a command line is
visible to other users in ``ps``. A model that cannot be loaded stops the process before it binds its port,
with an exit status of 2 and a one-line reason, which is what the local service manager shows from the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import SecretStr, ValidationError

from embed_pipeline.core.model_loading import ENV_VAR
from embed_pipeline.stages.serving.settings import API_KEY_ENV, ServeSettings

# Re-exported so callers need only this module to run a server.
__all__ = ["ServeSettings", "add_serve_arguments", "main", "run_server", "settings_from_args"]

_log = logging.getLogger("embed_pipeline.serving")


def run_server(settings: ServeSettings, backend=None) -> None:
    """Load ``settings.model_path`` (unless ``backend`` is given) and serve until SIGINT/SIGTERM."""
    import uvicorn

    from embed_pipeline.stages.serving.app import create_app
    from embed_pipeline.stages.serving.backends import load_backend

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embed_pipeline").setLevel(level)
    if backend is None:
        if settings.model_path is None:
            raise ValueError("No model to serve: pass --model PATH (an onnx_model export or a model folder).")
        _log.info(f"loading {settings.model_path} (backend {settings.backend}, variant {settings.variant})")
        backend = load_backend(
            settings.model_path, settings.backend, settings.variant, settings.providers, settings.device
        )
    app = create_app(backend, settings)
    # access_log off: requests are logged by our middleware, at DEBUG, without headers.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="onnx_model export folder or Hugging Face model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"bearer token clients must send; prefer the {API_KEY_ENV} environment variable (argv is visible in ps)",
    )
    parser.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto", help="default: by folder")
    parser.add_argument("--variant", choices=["fp32", "int8", "fp16"], default="fp32", help="ONNX graph to load")
    parser.add_argument("--providers", default=None, help="comma-separated ONNX Runtime execution providers")
    parser.add_argument("--device", default=None, help="torch backend device (default: cuda if available)")
    parser.add_argument("--model-name", default=None, help="model id clients see (default: the folder name)")
    parser.add_argument("--default-input-type", choices=["query", "passage"], default="query")
    parser.add_argument("--max-inputs-per-request", type=int, default=2048)
    parser.add_argument("--max-tokens-per-input", type=int, default=None, help="default: the model's max length")
    parser.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--max-batch-texts", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--no-batching", action="store_true", help="one request per forward pass (for comparison)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model that ships its own code (auto_map) run it (also EMBED_TRUST_REMOTE_CODE=1)",
    )
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """``ServeSettings`` from parsed arguments; the key from ``--api-key`` or else ``EMBED_SERVE_API_KEY``."""
    fields = {
        "model_path": Path(args.model),
        "host": args.host,
        "port": args.port,
        "backend": args.backend,
        "variant": args.variant,
        "providers": [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None,
        "device": args.device,
        "model_name": args.model_name,
        "default_input_type": args.default_input_type,
        "max_inputs_per_request": args.max_inputs_per_request,
        "max_tokens_per_input": args.max_tokens_per_input,
        "max_request_bytes": args.max_request_bytes,
        "max_batch_texts": args.max_batch_texts,
        "max_batch_tokens": args.max_batch_tokens,
        "max_wait_ms": args.max_wait_ms,
        "batching": not args.no_batching,
        "log_level": args.log_level,
    }
    if args.api_key:
        fields["api_key"] = SecretStr(args.api_key)
    return ServeSettings(**fields)


def serve_from_args(args: argparse.Namespace) -> int:
    """Validate, load and serve; a bad setting or an unloadable model prints one line and returns 2."""
    if getattr(args, "trust_remote_code", False):
        os.environ[ENV_VAR] = "1"  # read by every model load of this process (core/model_loading.py)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"error: invalid serve settings: {exc}", file=sys.stderr)
        return 2
    try:
        run_server(settings)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: cannot serve {settings.model_path}: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embed_pipeline.stages.serving.server", description="Serve an embedding model over HTTP."
    )
    return serve_from_args(add_serve_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
