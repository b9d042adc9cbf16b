"""Corpus fingerprints, the corpus sensor and the nightly schedule, evaluated on a real (temporary) instance."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

import embed_pipeline
from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs import ASSETS, sensors
from embed_pipeline.defs.jobs import embed_job
from embed_pipeline.defs.resources import build_resources
from embed_pipeline.defs.schedules import SCHEDULES, nightly_refresh
from embed_pipeline.defs.sensors import SENSORS, corpus_sensor
from embed_pipeline.stages.corpus_watch import corpus_fingerprints, corpus_state, document_files, scan_corpora
from embed_pipeline.stages.documents import discover_documents
from embed_pipeline_tests.conftest import SAMPLE_DOCS


def _write_corpus(root: Path, docs: dict[str, str] = SAMPLE_DOCS) -> Path:
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


# --- corpus_watch ---------------------------------------------------------------------------------------------


def test_fingerprint_tracks_document_content_only(tmp_path: Path):
    corpora = tmp_path / "corpora"
    _write_corpus(corpora / "a")
    _write_corpus(corpora / "b")
    first = corpus_fingerprints(corpora)
    assert set(first) == {"a", "b"} and first["a"] == first["b"]  # same files, same fingerprint

    (corpora / "a" / "notes.pdf").write_bytes(b"%PDF not a document")  # extension the stage does not read
    (corpora / "a" / ".git").mkdir()
    (corpora / "a" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # hidden: ignored
    os.utime(corpora / "a" / "json.txt", ns=(1, 1))  # a timestamp is not content
    assert corpus_fingerprints(corpora)["a"] == first["a"]

    (corpora / "a" / "json.txt").write_text("edited", encoding="utf-8")
    assert corpus_fingerprints(corpora)["a"] != first["a"]
    (corpora / "b" / "json.txt").rename(corpora / "b" / "json2.txt")  # a rename changes the doc ids
    assert corpus_fingerprints(corpora)["b"] != first["b"]


def test_hidden_temp_and_invalid_folders_are_not_corpora(tmp_path: Path, sample_corpus: Path):
    corpora = tmp_path / "corpora"
    _write_corpus(corpora / ".support.x1y2" / "support")  # `corpus add` copying in
    _write_corpus(corpora / "bad name")
    (corpora / "linked").symlink_to(sample_corpus, target_is_directory=True)  # `corpus add --link`
    (corpora / "file.txt").write_text("not a folder")
    states = scan_corpora(corpora)
    assert set(states) == {"linked"}
    assert states["linked"].num_files == len(SAMPLE_DOCS)
    assert corpus_fingerprints(tmp_path / "missing") == {}


def test_fingerprinted_files_are_those_the_documents_stage_reads(tmp_path: Path, sample_corpus: Path):
    (sample_corpus / "empty.md").write_text("")
    (sample_corpus / "image.png").write_bytes(b"\x89PNG")
    (sample_corpus / "loop").symlink_to(sample_corpus / "sub", target_is_directory=True)  # duplicate via a link
    result = discover_documents(sample_corpus)
    content_skips = {s.path for s in result.skipped if s.reason not in {"unsupported_extension", "duplicate_symlink"}}
    assert set(document_files(sample_corpus)) == {d.doc_id for d in result.documents} | content_skips


def test_hash_cache_skips_unchanged_files_and_forgets_removed_ones(tmp_path: Path, monkeypatch):
    corpora = tmp_path / "corpora"
    _write_corpus(corpora / "a")
    cache: dict = {}
    first = scan_corpora(corpora, cache)
    assert len(cache) == len(SAMPLE_DOCS)

    from embed_pipeline.stages import corpus_watch

    hashed: list[str] = []
    real_hash = corpus_watch._file_sha256
    monkeypatch.setattr(corpus_watch, "_file_sha256", lambda path: hashed.append(path) or real_hash(path))
    (corpora / "a" / "json.txt").write_text("edited", encoding="utf-8")
    (corpora / "a" / "socket").unlink()
    second = scan_corpora(corpora, cache)
    assert [Path(p).name for p in hashed] == ["json.txt"]  # only the edited file was read again
    assert len(cache) == len(SAMPLE_DOCS) - 1
    assert second["a"].fingerprint != first["a"].fingerprint
    assert second["a"].fingerprint == corpus_state(corpora / "a").fingerprint  # the cache never changes the result


# --- corpus_sensor ------------------------------------------------------------------------------------------------


@pytest.fixture()
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture()
def corpora(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "corpora"
    root.mkdir()
    monkeypatch.setenv("EMBED_CORPORA_DIR", str(root))
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_SECONDS", "0")
    sensors._HASH_CACHE.clear()
    return root


class _Ticker:
    """Evaluates the sensor like the daemon does: cursor carried over, partition requests applied."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor: str | None = None

    def tick(self):
        context = dg.build_sensor_context(
            instance=self.instance,
            instance_ref=self.instance.get_ref(),  # as in the daemon: lets Dagster validate the partition keys
            cursor=self.cursor,
            definitions=_definitions(),
        )
        data = corpus_sensor.evaluate_tick(context)
        for request in data.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = data.cursor
        return data


def _definitions() -> dg.Definitions:
    """The code location's assets and job with this module's sensor and schedule (independent of defs' wiring)."""
    return dg.Definitions(
        assets=ASSETS,
        jobs=[embed_job],
        sensors=SENSORS,
        schedules=SCHEDULES,
        resources=build_resources(get_settings()),
    )


def _requested(data) -> dict[str, str]:
    return {r.partition_key: r.tags[sensors.REASON_TAG] for r in data.run_requests}


def test_sensor_adds_partitions_runs_new_and_changed_corpora_and_skips_the_rest(instance, corpora: Path):
    ticker = _Ticker(instance)
    _write_corpus(corpora / "alpha")
    _write_corpus(corpora / "beta", {"one.md": "first corpus of beta, one document."})

    first = ticker.tick()
    assert _requested(first) == {"alpha": "new", "beta": "new"}
    assert [set(r.partition_keys) for r in first.dynamic_partitions_requests] == [{"alpha", "beta"}]
    assert set(instance.get_dynamic_partitions("corpus")) == {"alpha", "beta"}
    fingerprints = json.loads(ticker.cursor)
    assert {r.run_key for r in first.run_requests} == {f"{c}:{fp}" for c, fp in fingerprints.items()}
    assert all(r.job_name in (None, embed_job.name) for r in first.run_requests)

    second = ticker.tick()
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert "2 corpora unchanged" in second.skip_message

    (corpora / "beta" / "one.md").write_text("edited text of beta", encoding="utf-8")
    third = ticker.tick()
    assert _requested(third) == {"beta": "changed"}
    assert not third.dynamic_partitions_requests  # already registered

    _write_corpus(corpora / "gamma", {"g.txt": "a third corpus"})
    fourth = ticker.tick()
    assert _requested(fourth) == {"gamma": "new"}
    assert [list(r.partition_keys) for r in fourth.dynamic_partitions_requests] == [["gamma"]]


def test_sensor_runs_a_cli_registered_corpus_without_adding_it_again(instance, corpora: Path):
    instance.add_dynamic_partitions("corpus", ["docs"])
    _write_corpus(corpora / "docs")
    data = _Ticker(instance).tick()
    assert _requested(data) == {"docs": "new"}
    assert not data.dynamic_partitions_requests


def test_sensor_keeps_partition_of_removed_folder_and_waits_for_settled_content(instance, corpora: Path, monkeypatch):
    ticker = _Ticker(instance)
    _write_corpus(corpora / "alpha")
    _write_corpus(corpora / "beta")
    ticker.tick()

    for path in sorted((corpora / "beta").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (corpora / "beta").rmdir()
    data = ticker.tick()
    assert not data.run_requests
    assert set(json.loads(ticker.cursor)) == {"alpha"}
    assert set(instance.get_dynamic_partitions("corpus")) == {"alpha", "beta"}  # data stays

    (corpora / "empty").mkdir()  # no document yet: not a corpus to run
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_SECONDS", "3600")  # everything counts as "just changed"
    (corpora / "alpha" / "json.txt").write_text("being copied...", encoding="utf-8")
    data = ticker.tick()
    assert not data.run_requests
    assert "empty (no document yet)" in data.skip_message and "alpha (changed just now)" in data.skip_message

    monkeypatch.setenv("EMBED_SENSOR_SETTLE_SECONDS", "0")
    assert _requested(ticker.tick()) == {"alpha": "changed"}


def test_sensor_starts_over_from_an_unreadable_cursor(instance, corpora: Path):
    _write_corpus(corpora / "alpha")
    ticker = _Ticker(instance)
    ticker.cursor = "not json"
    assert _requested(ticker.tick()) == {"alpha": "new"}


def test_sensor_skips_when_corpora_dir_is_missing(instance, corpora: Path):
    corpora.rmdir()
    data = _Ticker(instance).tick()
    assert not data.run_requests and "does not exist" in data.skip_message


# --- nightly_refresh ---------------------------------------------------------------------------------------------


def test_schedule_requests_one_run_per_registered_corpus(instance, corpora: Path):
    when = datetime(2025, 3, 4, 2, 0, tzinfo=UTC)

    def tick():
        return nightly_refresh.evaluate_tick(
            dg.build_schedule_context(
                instance=instance,
                instance_ref=instance.get_ref(),
                scheduled_execution_time=when,
                repository_def=_definitions().get_repository_def(),
            )
        )

    assert "no registered corpus" in tick().skip_message

    for name in ("alpha", "beta"):
        _write_corpus(corpora / name)
    instance.add_dynamic_partitions("corpus", ["alpha", "beta", "gone"])  # "gone" has no folder: skipped
    data = tick()
    assert [r.partition_key for r in data.run_requests] == ["alpha", "beta"]
    assert [r.run_key for r in data.run_requests] == ["alpha:2025-03-04", "beta:2025-03-04"]
    assert all(r.tags[sensors.TRIGGER_TAG] == "nightly_refresh" for r in data.run_requests)
    assert nightly_refresh.cron_schedule == "0 2 * * *" and nightly_refresh.job_name == embed_job.name


def test_sensor_and_schedule_are_registered_stopped():
    """The code location serves both, stopped until someone turns them on (each run fine-tunes a model)."""
    defs = embed_pipeline.definitions
    assert defs.resolve_sensor_def("corpus_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_schedule_def("nightly_refresh").default_status == dg.DefaultScheduleStatus.STOPPED
