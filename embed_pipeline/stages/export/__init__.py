"""Export a fine-tuned encoder for serving: ONNX (fp32, int8, fp16), parity checks, TensorRT engines.

- :mod:`.onnx_export`: model folder -> ``model.onnx`` (+ ``model.int8.onnx``, ``model.fp16.onnx``), tokenizer and
  ``manifest.json``. Pooling and L2 normalisation are inside the graph: one output, ``embeddings`` [batch, dim].
- :mod:`.onnx_runtime`: :class:`~.onnx_runtime.OnnxEncoder`, the export behind ``Encoder.encode``'s interface.
- :mod:`.parity`: the export against its checkpoint on an eval set (cosine per text, retrieval metrics, gates).
- :mod:`.tensorrt_engine`: a TensorRT 10 engine from ``model.onnx`` (needs the ``tensorrt`` package and a GPU).

Nothing here imports Dagster; the ``onnx_model`` asset calls these functions.
"""
