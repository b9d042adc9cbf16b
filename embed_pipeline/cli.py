"""`embed-pipeline`: manage corpora (folders + Dagster partitions), build the demo corpus, print reports.

embed-pipeline corpus add NAME [--from PATH] [--link]   copy (or link) a folder in and register the partition
embed-pipeline corpus list                              corpora on disk and partitions in the instance
embed-pipeline corpus remove NAME                       unregister the partition (files are kept)
embed-pipeline demo-corpus [--name stdlib_docs]         build the demo corpus from stdlib docstrings
embed-pipeline report NAME                              base vs fine-tuned table of a corpus (and its service)
embed-pipeline service status|stop NAME                 the corpus's deployed embedding service
embed-pipeline serve --model PATH [--port 8000]         serve a model or ONNX export at /v1/embeddings
embed-pipeline serve --model PATH [--port 8000]         serve a model at /v1/embeddings (OpenAI + NIM API);
                                                        API key from EMBED_SERVE_API_KEY
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from embed_pipeline.core.artifacts import validate_corpus_name
from embed_pipeline.core.settings import get_settings

PARTITIONS_NAME = "corpus"


class CliError(Exception):
    """An error the user can fix; printed without a traceback."""


def _instance():
    """The Dagster instance of DAGSTER_HOME (defaulting to ./.dagster, with the project's dagster.yaml)."""
    from dagster import DagsterInstance

    if not os.environ.get("DAGSTER_HOME"):
        home = Path(".dagster").resolve()
        home.mkdir(exist_ok=True)
        if Path("dagster.yaml").exists() and not (home / "dagster.yaml").exists():
            shutil.copy("dagster.yaml", home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
        print(f"note: DAGSTER_HOME was not set; using {home} (export DAGSTER_HOME={home} for dagster commands)")
    return DagsterInstance.get()


def register_partition(name: str) -> bool:
    """Add ``name`` to the ``corpus`` dynamic partitions; False when it was already there."""
    instance = _instance()
    if instance.has_dynamic_partition(PARTITIONS_NAME, name):
        return False
    instance.add_dynamic_partitions(PARTITIONS_NAME, [name])
    return True


def corpus_add(name: str, source: str | None, link: bool) -> Path:
    try:
        validate_corpus_name(name)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    corpora = get_settings().corpora_dir
    target = corpora / name
    if source is not None:
        src = Path(source).expanduser().resolve()
        if not src.is_dir():
            raise CliError(f"--from {source!r} is not a folder: point it at the folder holding your documents.")
        if target.exists() or target.is_symlink():
            raise CliError(f"{target} already exists: choose another NAME, or remove it first to replace its contents.")
        corpora.mkdir(parents=True, exist_ok=True)
        if link:
            target.symlink_to(src, target_is_directory=True)
        else:
            # Copy beside the target, then rename: a killed copy never leaves a half corpus under its name.
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=corpora))
            try:
                shutil.copytree(src, tmp / name, symlinks=True)
                os.replace(tmp / name, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    elif not target.is_dir():
        raise CliError(f"{target} does not exist: create it with your documents, or pass --from PATH to copy a folder.")
    added = register_partition(name)
    state = "registered" if added else "already registered"
    print(f"corpus {name!r}: {target} ({state} as a '{PARTITIONS_NAME}' partition)")
    return target


def corpus_list() -> list[tuple[str, str, str]]:
    corpora = get_settings().corpora_dir
    on_disk = (
        {p.name for p in corpora.iterdir() if p.is_dir() and not p.name.startswith(".")} if corpora.is_dir() else set()
    )
    registered = set(_instance().get_dynamic_partitions(PARTITIONS_NAME))
    rows = []
    for name in sorted(on_disk | registered):
        files = sum(1 for f in (corpora / name).rglob("*") if f.is_file()) if name in on_disk else 0
        state = (
            "ok"
            if name in on_disk and name in registered
            else ("not registered" if name in on_disk else "folder missing")
        )
        rows.append((name, str(files) if name in on_disk else "-", state))
    if not rows:
        print(f"no corpora under {corpora} (add one: embed-pipeline corpus add NAME --from PATH)")
    for name, files, state in rows:
        print(f"{name:32s} {files:>8s} files  {state}")
    return rows


def corpus_remove(name: str) -> None:
    instance = _instance()
    if not instance.has_dynamic_partition(PARTITIONS_NAME, name):
        raise CliError(f"corpus {name!r} is not registered (see: embed-pipeline corpus list)")
    instance.delete_dynamic_partition(PARTITIONS_NAME, name)
    print(f"corpus {name!r} unregistered; its folder and artifacts are kept")


def demo_corpus(name: str, max_docs: int | None) -> Path:
    from embed_pipeline.stages.demo_corpus import DEMO_MODULES, build_stdlib_corpus

    target = get_settings().corpora_dir / validate_corpus_name(name)
    modules = DEMO_MODULES[:max_docs] if max_docs else DEMO_MODULES
    paths = build_stdlib_corpus(target, modules)
    print(f"demo corpus {name!r}: {len(paths)} documents from Python standard library docstrings in {target}")
    corpus_add(name, None, link=False)
    return target


def report(name: str) -> str:
    from embed_pipeline.stages.evaluation.stage import RetrievalMetrics

    table = RetrievalMetrics.at(get_settings().artifacts_dir, name).file(RetrievalMetrics.TABLE)
    if not table.exists():
        raise CliError(f"{table} does not exist: materialize retrieval_metrics for corpus {name!r} first.")
    text = table.read_text(encoding="utf-8")
    info = _service_manager(name).current()
    if info is not None:
        text += (
            f"\nembedding service: {info.base_url} (model {info.model_name!r}, {info.backend} {info.variant or ''}); "
            f"stop it with `embed-pipeline service stop {name}`\n"
        )
    print(text)
    return text


def _service_manager(name: str):
    from embed_pipeline.stages.serving.local_service import LocalServiceManager
    from embed_pipeline.stages.serving.service import EmbeddingService

    try:
        validate_corpus_name(name)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return LocalServiceManager(EmbeddingService.at(get_settings().artifacts_dir, name).dir)


def service(action: str, name: str) -> None:
    manager = _service_manager(name)
    if action == "stop":
        print(f"corpus {name!r}: " + ("service stopped" if manager.stop() else "no service was running"))
        return
    status = manager.status()
    if status.info is None:
        print(f"corpus {name!r}: no service deployed (materialize embedding_service)")
        return
    state = "ready" if status.ready else "running, not ready" if status.running else "not running"
    print(f"corpus {name!r}: {status.info.base_url} ({state}; pid {status.info.pid}, log {status.info.log_path})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embed-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="manage corpora").add_subparsers(dest="action", required=True)
    add = corpus.add_parser("add", help="copy or link a folder in as a corpus and register its partition")
    add.add_argument("name")
    add.add_argument("--from", dest="source", help="folder of documents to copy in")
    add.add_argument("--link", action="store_true", help="symlink the folder instead of copying it")
    corpus.add_parser("list", help="corpora on disk and registered partitions")
    remove = corpus.add_parser("remove", help="unregister a corpus partition (files kept)")
    remove.add_argument("name")
    demo = sub.add_parser("demo-corpus", help="build the demo corpus from Python standard library docstrings")
    demo.add_argument("--name", default="stdlib_docs")
    demo.add_argument("--max-docs", type=int, default=None, help="use only the first N demo modules")
    rep = sub.add_parser("report", help="print the base vs fine-tuned metrics table of a corpus")
    rep.add_argument("name")
    svc = sub.add_parser("service", help="status or stop of a corpus's deployed embedding service")
    svc.add_argument("action", choices=["status", "stop"])
    svc.add_argument("name")
    from embed_pipeline.stages.serving.server import add_serve_arguments

    add_serve_arguments(
        sub.add_parser(
            "serve",
            help="serve an onnx_model export or a model folder over HTTP (OpenAI embeddings API + NIM extensions)",
            description="Serve an embedding model at /v1/embeddings. Set the API key in EMBED_SERVE_API_KEY "
            "rather than --api-key: command lines are visible to other users in ps.",
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "corpus":
            if args.action == "add":
                corpus_add(args.name, args.source, args.link)
            elif args.action == "list":
                corpus_list()
            else:
                corpus_remove(args.name)
        elif args.command == "demo-corpus":
            demo_corpus(args.name, args.max_docs)
        elif args.command == "report":
            report(args.name)
        elif args.command == "service":
            service(args.action, args.name)
        elif args.command == "serve":
            from embed_pipeline.stages.serving.server import serve_from_args

            return serve_from_args(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
