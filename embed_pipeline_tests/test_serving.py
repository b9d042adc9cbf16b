"""The embedding service: OpenAI/NIM API behaviour, limits, errors, auth, batching and the endpoint client.

A real uvicorn server on loopback (in a thread) serves the tiny random encoder through the PyTorch backend; the
reference vectors come from ``core.encoder.Encoder`` over the same folder, so "the service returns what the
pipeline measured" is checked to 1e-5.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import numpy as np
import openai
import pytest
import uvicorn
from pydantic import SecretStr

from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.stages.serving.app import create_app
from embed_pipeline.stages.serving.backends import detect_backend, load_backend
from embed_pipeline.stages.serving.batcher import DynamicBatcher
from embed_pipeline.stages.serving.client import EndpointEncoder
from embed_pipeline.stages.serving.settings import ServeSettings
from embed_pipeline.stages.serving.torch_backend import TorchBackend, encoder_config_for_folder

KEY = "sk-test-7f3a9c1e5b"
TEXTS = [
    "The heappush function pushes the value item onto the heap.",
    "json.loads deserializes a string containing a JSON document.",
    "A cursor object executes SQL statements and fetches results.",
    "The socket module provides access to the BSD socket interface.",
]
LONG_TEXT = " ".join(f"word{i} alpha beta" for i in range(40))


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TorchBackend:
    return TorchBackend(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Encoder:
    return Encoder(EncoderConfig(model=str(tiny_model_dir)))


class LiveServer:
    """``create_app(backend, settings)`` under a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def service(self):
        return self.app.state.service

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        if wait_ready:
            while httpx.get(f"{self.url}/v1/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "service did not become ready"
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@contextmanager
def serving(backend, **overrides):
    settings = ServeSettings(model_name="tiny", api_key=None, **overrides)
    server = LiveServer(create_app(backend, settings)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(backend):
    with serving(backend, max_tokens_per_input=32, max_inputs_per_request=8, max_request_bytes=4096) as live:
        yield live


def _client(server: LiveServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def _post(server: LiveServer, body, **kwargs) -> httpx.Response:
    if isinstance(body, (bytes, str)) or hasattr(body, "__next__"):
        return httpx.post(f"{server.url}/v1/embeddings", content=body, **kwargs)
    return httpx.post(f"{server.url}/v1/embeddings", json=body, **kwargs)


def _vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = sorted(response.json()["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["message"]
    assert "Traceback" not in response.text
    return error


# ------------------------------------------------------------------------------------------ API and values


def test_openai_client_float_and_base64_match_encoder(server, reference):
    client = _client(server)
    floats = client.embeddings.create(input=TEXTS, model="tiny", encoding_format="float")
    assert floats.model == "tiny" and [d.index for d in floats.data] == [0, 1, 2, 3]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    as_floats = np.array([d.embedding for d in floats.data], dtype=np.float32)
    # Explicit base64: the raw string; the client's default (no format) asks for base64 and decodes it itself.
    raw = client.embeddings.create(input=TEXTS, model="tiny", encoding_format="base64")
    as_b64 = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    default = client.embeddings.create(input=TEXTS, model="tiny")
    as_default = np.array([d.embedding for d in default.data], dtype=np.float32)
    expected = reference.encode(TEXTS, "query")
    np.testing.assert_allclose(as_floats, expected, atol=1e-5)
    np.testing.assert_array_equal(as_b64, as_floats)
    np.testing.assert_array_equal(as_default, as_floats)


def test_input_type_prefixes_match_encoder_per_kind(server, reference):
    client = _client(server)
    query = client.embeddings.create(input=TEXTS, model="tiny", extra_body={"input_type": "query"})
    passage = client.embeddings.create(input=TEXTS, model="tiny", extra_body={"input_type": "passage"})
    q = np.array([d.embedding for d in query.data], dtype=np.float32)
    p = np.array([d.embedding for d in passage.data], dtype=np.float32)
    np.testing.assert_allclose(q, reference.encode(TEXTS, "query"), atol=1e-5)
    np.testing.assert_allclose(p, reference.encode(TEXTS, "passage"), atol=1e-5)
    assert np.abs(q - p).max() > 1e-3  # the prefixes differ, so the vectors do
    default = _vectors(_post(server, {"input": TEXTS}))  # no input_type: the documented default, query
    np.testing.assert_allclose(default, q, atol=1e-6)


def test_string_and_list_input(server):
    single = _post(server, {"input": TEXTS[0], "model": "tiny"})
    listed = _post(server, {"input": [TEXTS[0]], "model": "tiny"})
    assert len(single.json()["data"]) == 1
    np.testing.assert_array_equal(_vectors(single), _vectors(listed))


def test_truncate_none_start_end(server, backend, tiny_model_dir):
    error = _error(_post(server, {"input": ["short", LONG_TEXT], "truncate": "NONE"}), 400)
    assert error["code"] == "input_too_long" and "input[1]" in error["message"] and "32" in error["message"]
    _error(_post(server, {"input": LONG_TEXT}), 400)  # NONE is the default
    tok = backend.tokenizer
    prefix = tok("query: ", add_special_tokens=False)["input_ids"]
    body = tok(LONG_TEXT, add_special_tokens=False)["input_ids"]
    keep = 32 - 2 - len(prefix)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    expected = {
        "END": [cls, *prefix, *body[:keep], sep],
        "START": [cls, *prefix, *body[-keep:], sep],
    }
    assert expected["END"] == tok("query: " + LONG_TEXT, truncation=True, max_length=32)["input_ids"]
    for mode, ids in expected.items():
        response = _post(server, {"input": [LONG_TEXT], "truncate": mode})
        assert response.json()["usage"]["prompt_tokens"] == 32
        np.testing.assert_allclose(_vectors(response)[0], backend.embed_token_ids([ids])[0], atol=1e-5)
    # END is what the pipeline's Encoder embeds at that max length.
    short = Encoder(EncoderConfig(model=str(tiny_model_dir), query_max_length=32))
    end = _vectors(_post(server, {"input": [LONG_TEXT], "truncate": "END"}))
    np.testing.assert_allclose(end, short.encode([LONG_TEXT], "query"), atol=1e-5)


def test_dimensions_matryoshka(server):
    full = _vectors(_post(server, {"input": TEXTS}))
    cut = _vectors(_post(server, {"input": TEXTS, "dimensions": 8}))
    assert cut.shape == (4, 8)
    np.testing.assert_allclose(cut, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    client = _client(server)
    via_client = client.embeddings.create(input=TEXTS, model="tiny", dimensions=8)
    assert len(via_client.data[0].embedding) == 8
    assert _error(_post(server, {"input": "x", "dimensions": 33}), 400)["param"] == "dimensions"
    _error(_post(server, {"input": "x", "dimensions": 0}), 422)


# ------------------------------------------------------------------------------------------ errors, limits


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "x", "input_type": "document"}, "input_type"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "truncate": "middle"}, "truncate"),
        ({"input": "x", "dimensions": "8"}, "dimensions"),
        ({"input": "x", "inputtype": "query"}, "inputtype"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": None}, "input"),
        ({"model": "tiny"}, "input"),
        (["x"], None),
    ],
)
def test_schema_errors_are_422(server, body, param):
    error = _error(_post(server, body), 422)
    assert error["param"] == param and error["code"] == "validation_error"


def test_bad_input_is_400(server):
    assert "empty list" in _error(_post(server, {"input": []}), 400)["message"]
    assert "input[1]" in _error(_post(server, {"input": ["a", ""]}), 400)["message"]
    _error(_post(server, {"input": ""}), 400)


def test_malformed_json_is_400_and_the_server_keeps_serving(server):
    for body in (b"{not json", b"", b"\xff\xfe\x00", b'{"input": "x"'):
        _error(_post(server, body, headers={"content-type": "application/json"}), 400)
    assert _post(server, {"input": "still here"}).status_code == 200


def test_413_too_many_inputs_and_too_large_bodies(server):
    error = _error(_post(server, {"input": ["x"] * 9}), 413)
    assert error["code"] == "too_many_inputs" and "8" in error["message"]
    big = json.dumps({"input": ["y " * 2500]}).encode()
    assert "4096" in _error(_post(server, big), 413)["message"]  # declared by Content-Length

    def chunks():  # no Content-Length: enforced while reading
        for _ in range(10):
            yield b" " * 1000

    _error(_post(server, chunks()), 413)
    assert _post(server, {"input": "after the big ones"}).status_code == 200


def test_404_405_models_and_unknown_model(server):
    assert _error(httpx.get(f"{server.url}/v2/nothing"), 404)["type"] == "not_found_error"
    assert "POST" in _error(httpx.get(f"{server.url}/v1/embeddings"), 405)["message"]
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert _client(server).models.list().data[0].id == "tiny"
    assert _error(_post(server, {"input": "x", "model": "gpt-x"}), 404)["code"] == "model_not_found"
    assert httpx.get(f"{server.url}/v1/health/live").status_code == 200


# ------------------------------------------------------------------------------------------------- auth


def test_auth_and_the_key_never_logged(backend, caplog):
    caplog.set_level(logging.DEBUG, logger="embed_pipeline")
    settings = ServeSettings(model_name="tiny", api_key=SecretStr(KEY))
    server = LiveServer(create_app(backend, settings)).start()
    try:
        missing = _error(_post(server, {"input": "x"}), 401)
        assert missing["type"] == "authentication_error" and KEY not in json.dumps(missing)
        wrong = _post(server, {"input": "x"}, headers={"Authorization": "Bearer sk-wrong"})
        assert KEY not in wrong.text and "wrong" not in wrong.text
        _error(wrong, 401)
        _error(_post(server, {"input": "x"}, headers={"Authorization": f"Basic {KEY}"}), 401)
        _error(httpx.get(f"{server.url}/v1/models"), 401)
        _error(httpx.get(f"{server.url}/v2/unknown"), 401)  # unauthenticated callers do not learn the routes
        assert httpx.get(f"{server.url}/v1/health/ready").status_code == 200  # probes need no key
        with pytest.raises(openai.AuthenticationError):
            _client(server, "sk-nope").embeddings.create(input="x", model="tiny")
        ok = _client(server, KEY).embeddings.create(input=TEXTS, model="tiny")
        assert len(ok.data) == 4
    finally:
        server.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /v1/embeddings 200" in logged and "POST /v1/embeddings 401" in logged
    assert KEY not in logged and KEY not in repr(settings)


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("EMBED_SERVE_API_KEY", KEY)
    assert ServeSettings().api_key.get_secret_value() == KEY
    monkeypatch.setenv("EMBED_SERVE_API_KEY", "")
    assert ServeSettings().api_key is None


# --------------------------------------------------------------------------------- batching, concurrency


def test_concurrent_clients_get_their_own_rows(backend, reference):
    """32 threads x 10 requests of 1-3 distinct texts: every answer equals the serial encoding of its texts."""
    with serving(backend, max_wait_ms=5.0) as server:

        def worker(t: int) -> list[tuple[list[str], str, np.ndarray]]:
            out = []
            with httpx.Client(timeout=60) as client:
                for i in range(10):
                    texts = [
                        f"thread {t} request {i} text {k} " + TEXTS[(t + i + k) % 4] for k in range(1 + (t + i) % 3)
                    ]
                    kind = "query" if (t + i) % 2 else "passage"
                    r = client.post(f"{server.url}/v1/embeddings", json={"input": texts, "input_type": kind})
                    out.append((texts, kind, _vectors(r)))
            return out

        with ThreadPoolExecutor(32) as pool:
            results = [row for rows in pool.map(worker, range(32)) for row in rows]
        stats = server.service.batcher.stats
    assert len(results) == 320
    for kind in ("query", "passage"):
        mine = [(texts, got) for texts, k, got in results if k == kind]
        expected = reference.encode([t for texts, _ in mine for t in texts], kind)
        got = np.concatenate([g for _, g in mine])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert stats.requests >= 320 and stats.rounds < stats.requests  # requests really shared forward passes


def test_batcher_scatters_rows_and_isolates_failures():
    """Rows come back to their own caller in order; a failing pass fails only the callers with rows in it."""

    def embed(batch: list[list[int]]) -> np.ndarray:
        if any(seq[0] == 666 for seq in batch):
            raise RuntimeError("poisoned batch")
        return np.array([[seq[0], len(seq)] for seq in batch], dtype=np.float32)

    async def scenario():
        batcher = DynamicBatcher(embed, 2, max_batch_texts=4, max_batch_tokens=64, max_wait_s=0.01)
        await batcher.start()
        try:
            jobs = [[[100 * j + r] + [0] * ((j * 7 + r * 3) % 9) for r in range(1 + j % 4)] for j in range(12)]
            poisoned = [[666]]
            results = await asyncio.gather(
                *(batcher.embed(seqs) for seqs in jobs), batcher.embed(poisoned), return_exceptions=True
            )
            return jobs, results, batcher.stats
        finally:
            await batcher.stop()

    jobs, results, stats = asyncio.run(scenario())
    assert isinstance(results[-1], RuntimeError)
    ok = [r for r in results[:-1] if not isinstance(r, Exception)]
    assert len(ok) >= 12 - 3  # at most the three callers sharing the poisoned pass (4 texts) fail with it
    for seqs, got in zip(jobs, results[:-1], strict=True):
        if isinstance(got, Exception):
            assert "poisoned" in str(got)
            continue
        np.testing.assert_array_equal(got, [[s[0], len(s)] for s in seqs])
    assert stats.rounds < 13 and stats.largest_pass <= 4


def test_backend_failure_is_500_without_details(backend):
    class Flaky:
        def __init__(self) -> None:
            self.config, self.tokenizer, self.dimension, self.fail = backend.config, backend.tokenizer, 32, False

        def embed_token_ids(self, batch):
            if self.fail:
                raise RuntimeError("secret internal detail /srv/model")
            return backend.embed_token_ids(batch)

    flaky = Flaky()
    with serving(flaky) as server:
        flaky.fail = True
        error = _error(_post(server, {"input": "x"}), 500)
        assert error["type"] == "server_error" and "secret" not in error["message"]
        flaky.fail = False
        assert _post(server, {"input": "x"}).status_code == 200


def test_ready_is_503_until_warm_up_succeeds(backend):
    gate = threading.Event()

    class Slow:
        config, tokenizer, dimension = backend.config, backend.tokenizer, 32

        def embed_token_ids(self, batch):
            gate.wait(10)
            return backend.embed_token_ids(batch)

    server = LiveServer(create_app(Slow(), ServeSettings(model_name="slow", api_key=None))).start(wait_ready=False)
    try:
        response = httpx.get(f"{server.url}/v1/health/ready")
        assert response.status_code == 503 and "warming up" in response.json()["error"]["message"]
        assert httpx.get(f"{server.url}/v1/health/live").status_code == 200
        gate.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/v1/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        gate.set()
        server.stop()


# ------------------------------------------------------------------------------ client, backends, CLI


def test_endpoint_encoder_scores_like_the_local_encoder(server, reference):
    from embed_pipeline.stages.evaluation import BeirData, evaluate_encoder

    data = BeirData(
        corpus={f"d{i}": t for i, t in enumerate(TEXTS)},
        queries={"q0": "push onto a heap", "q1": "parse JSON", "q2": "open a socket"},
        qrels={"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d3": 1}},
    )
    remote = EndpointEncoder(server.url, "tiny", batch_size=3)
    texts = [*TEXTS, TEXTS[0], LONG_TEXT]  # a duplicate, and a text cut by truncate=END (32 tokens here)
    np.testing.assert_allclose(remote.encode(texts[:5], "passage"), reference.encode(texts[:5], "passage"), atol=1e-5)
    assert remote.encode(texts, "query").shape == (6, 32)
    assert evaluate_encoder(remote, data, [1, 3]) == pytest.approx(evaluate_encoder(reference, data, [1, 3]))
    with pytest.raises(RuntimeError, match="404.*does not exist"):
        EndpointEncoder(server.url, "other-model").encode(["x"], "query")
    with pytest.raises(ValueError, match="empty"):
        remote.encode(["a", ""], "query")


def test_backend_detection_and_folder_config(tmp_path: Path, tiny_model_dir: Path):
    assert detect_backend(tiny_model_dir) == "torch"
    onnx = tmp_path / "onnx_model"
    onnx.mkdir()
    (onnx / "manifest.json").write_text("{}")
    (onnx / "model.onnx").write_bytes(b"")
    assert detect_backend(onnx) == "onnx"
    with pytest.raises(ValueError, match="neither an ONNX export"):
        detect_backend(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        load_backend(tmp_path / "missing")
    assert encoder_config_for_folder(tiny_model_dir) == EncoderConfig(model=str(tiny_model_dir))
    trained = tmp_path / "trained"
    trained.mkdir()
    saved = EncoderConfig(model="base", query_prefix="Q ", passage_max_length=64).model_dump(mode="json")
    (trained / "training_history.json").write_text(json.dumps({"encoder_config": saved}))
    from_history = encoder_config_for_folder(trained)
    assert (from_history.query_prefix, from_history.passage_max_length, from_history.model) == ("Q ", 64, str(trained))


def test_cli_serve_arguments(monkeypatch, tmp_path: Path, capsys):
    from embed_pipeline import cli
    from embed_pipeline.stages.serving.server import settings_from_args

    monkeypatch.setenv("EMBED_SERVE_API_KEY", KEY)
    args = cli.build_parser().parse_args(["serve", "--model", str(tmp_path), "--port", "9001", "--no-batching"])
    settings = settings_from_args(args)
    assert (settings.port, settings.batching, settings.api_key.get_secret_value()) == (9001, False, KEY)
    assert cli.main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and KEY not in err


def test_onnx_export_served_matches_torch(tmp_path: Path, tiny_model_dir: Path, reference):
    """Integration: the tiny model exported to ONNX and served through ONNX Runtime (when the export exists)."""
    export = pytest.importorskip("embed_pipeline.stages.export.onnx_export")
    out = tmp_path / "onnx_model"
    export.export_onnx(tiny_model_dir, out, export.OnnxExportConfig(int8=False))
    assert detect_backend(out) == "onnx"
    onnx_backend = load_backend(out)
    with serving(onnx_backend) as server:
        client = _client(server)
        for kind in ("query", "passage"):
            got = client.embeddings.create(input=TEXTS, model="tiny", extra_body={"input_type": kind})
            vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
            np.testing.assert_allclose(vectors, reference.encode(TEXTS, kind), atol=1e-4)
