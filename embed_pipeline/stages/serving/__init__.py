"""Serving: an OpenAI- and NIM-compatible ``/v1/embeddings`` service for an exported or fine-tuned model.

Modules, each about one thing (import them directly; this package imports nothing heavy on purpose, so
``client`` can be used without torch, and ``local_service`` without loading a model):

- ``settings``: :class:`ServeSettings`, every limit and knob of the service.
- ``schemas``: the request and response bodies (OpenAI embeddings API plus NIM's ``input_type``/``truncate``).
- ``errors``: OpenAI-style JSON errors.
- ``backends`` / ``torch_backend``: what the service needs from a model (:class:`EmbeddingBackend`) and how a
  model folder becomes one (ONNX Runtime for an ``onnx_model`` export, PyTorch for a Hugging Face folder).
- ``tokenization``: prefixes, token limits and NIM truncation (``NONE``/``START``/``END``).
- ``batcher``: dynamic batching of concurrent requests into one inference thread.
- ``middleware``: bearer-token auth and the per-request debug log line.
- ``app``: the Starlette application; ``server``: ``run_server`` and the ``serve`` command line.
- ``client``: :class:`EndpointEncoder`, a live endpoint behind the ``Encoder.encode`` interface.
- ``service``, ``local_service``, ``nim_container``: deploying the service as a local process or a NIM container.
"""
