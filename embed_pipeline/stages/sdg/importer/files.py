"""Which files an import reads, and each JSON file read in its format (``recipe`` or ``pairs``).

**Files**: a file is read as it is; a folder that is not BEIR gives its ``generated_batch*.json`` files when it
has any (the recipe's output folder, whose ``stage0_raw_responses.jsonl`` log is not pairs), else every
``*.jsonl`` / ``*.json`` / ``*.ndjson`` in it (not recursive, sorted). In ``auto`` each file's format is that of
its first record shaped like a recipe record (``chunks`` + ``deduplicated_qa_pairs`` or ``qa_generation``) or a
pair (a query key + a positive key); a ``.json`` file may be a JSON array, one object, or JSONL.
"""

from __future__ import annotations

from pathlib import Path

from embed_pipeline.stages.sdg.importer import fields
from embed_pipeline.stages.sdg.importer.config import EXPECTED
from embed_pipeline.stages.sdg.importer.formats.pairs import read_pair_record
from embed_pipeline.stages.sdg.importer.formats.recipe import read_recipe_record
from embed_pipeline.stages.sdg.importer.json_stream import iter_records
from embed_pipeline.stages.sdg.importer.state import ImportState

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
RECIPE_BATCH_GLOB = "generated_batch*.json"


def relative(path: Path, root: Path) -> str:
    """How a file is named in messages: relative to the import folder, or its name when a file was imported."""
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()


def json_files(root: Path) -> list[Path]:
    """The files to read at ``root`` (a file or a non-BEIR folder); ValueError when there are none."""
    if root.is_file():
        if root.suffix.lower() not in JSON_SUFFIXES:
            raise ValueError(f"Cannot import {root}: not a .jsonl or .json file. {EXPECTED}")
        return [root]
    batches = sorted(p for p in root.glob(RECIPE_BATCH_GLOB) if p.is_file())
    if batches:  # the recipe's stage 0 output folder: its logs (stage0_raw_responses.jsonl) are not pairs
        return batches
    files = sorted(
        p for p in root.iterdir() if p.is_file() and p.suffix.lower() in JSON_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise ValueError(f"Folder {root} is not a BEIR folder and holds no .jsonl or .json files. {EXPECTED}")
    return files


def read_json_file(path: Path, rel: str, fmt: str | None, state: ImportState) -> None:
    """One file's records into ``state``, as ``fmt`` (None: the first recognisable record decides)."""
    records = list(iter_records(path, rel, state.error))
    state.files.append(rel)
    if fmt is None:  # auto: the first recognisable record decides the file's format
        fmt = next((s for _, r in records if (s := fields.shape(r)) is not None), None)
    if fmt is None:
        for where, record in records:
            state.error("unknown_record_shape", where, fields.shape_hint(record))
        return
    state.formats.add(fmt)
    start = len(state.raws)
    for where, record in records:
        if fmt == "recipe":
            read_recipe_record(record, where, state)
        else:
            read_pair_record(record, where, state)
    fields.apply_scale(state.raws[start:], fmt)
