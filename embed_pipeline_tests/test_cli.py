"""`embed-pipeline corpus ...`: names, copies, links, registration, and clear errors."""

from pathlib import Path

import dagster as dg
import pytest

from embed_pipeline import cli


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("EMBED_CORPORA_DIR", str(tmp_path / "corpora"))
    monkeypatch.setenv("EMBED_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    return tmp_path


def _partitions(home: Path) -> list[str]:
    return dg.DagsterInstance.from_config(str(home)).get_dynamic_partitions("corpus")


def test_add_copies_and_registers(env: Path, sample_corpus: Path, capsys):
    assert cli.main(["corpus", "add", "docs", "--from", str(sample_corpus)]) == 0
    assert (env / "corpora" / "docs" / "sub" / "sqlite3.notes.md").is_file()
    assert not (env / "corpora" / "docs").is_symlink()
    assert _partitions(env / "home") == ["docs"]
    assert cli.main(["corpus", "list"]) == 0
    assert "docs" in capsys.readouterr().out


def test_add_link(env: Path, sample_corpus: Path):
    assert cli.main(["corpus", "add", "linked", "--from", str(sample_corpus), "--link"]) == 0
    assert (env / "corpora" / "linked").resolve() == sample_corpus.resolve()


def test_add_existing_folder_without_from(env: Path, sample_corpus: Path):
    (env / "corpora").mkdir()
    (env / "corpora" / "mine").mkdir()
    (env / "corpora" / "mine" / "a.txt").write_text("Some text here.")
    assert cli.main(["corpus", "add", "mine"]) == 0
    assert _partitions(env / "home") == ["mine"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["corpus", "add", "bad name"], "Invalid corpus name"),
        (["corpus", "add", "../escape"], "Invalid corpus name"),
        (["corpus", "add", "nothing_here"], "does not exist"),
        (["corpus", "add", "x", "--from", "/no/such/folder"], "is not a folder"),
        (["corpus", "remove", "never_added"], "is not registered"),
        (["report", "never_run"], "materialize retrieval_metrics"),
    ],
)
def test_errors_are_clear_and_exit_2(env: Path, argv: list[str], message: str, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_add_refuses_to_overwrite(env: Path, sample_corpus: Path, capsys):
    assert cli.main(["corpus", "add", "docs", "--from", str(sample_corpus)]) == 0
    assert cli.main(["corpus", "add", "docs", "--from", str(sample_corpus)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_remove_unregisters_but_keeps_files(env: Path, sample_corpus: Path):
    cli.main(["corpus", "add", "docs", "--from", str(sample_corpus)])
    assert cli.main(["corpus", "remove", "docs"]) == 0
    assert _partitions(env / "home") == []
    assert (env / "corpora" / "docs" / "heapq.md").exists()


def test_demo_corpus_builds_and_registers(env: Path):
    assert cli.main(["demo-corpus", "--name", "demo", "--max-docs", "6"]) == 0
    assert len(list((env / "corpora" / "demo").glob("*.md"))) >= 3
    assert _partitions(env / "home") == ["demo"]
