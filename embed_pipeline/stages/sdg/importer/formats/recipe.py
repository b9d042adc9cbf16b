"""The ``recipe`` format: the SDG output of NVIDIA's embedding fine-tuning recipe.

Repository ``NVIDIA-NeMo/Nemotron``, ``src/nemotron/recipes/embed/stage0_sdg/vendor/retriever-sdg/src/retriever_sdg/
pipeline.py``, read by ``stage1_data_prep/scripts/convert_to_retriever_data.py``. Stage 0 writes
``generated_batch{i}_{start}_{end}.json`` files, each a JSON array (``DataFrame.to_json(orient="records")``) with
one record per document or bundle:

- ``file_name``: the source path(s) (a list; a string in older output) - used in messages only;
- ``chunks``: ``[{"chunk_id": 1, "text": ..., ...}]`` - the recipe's own chunks; ``chunk_id`` counts from 1;
- ``deduplicated_qa_pairs`` (else ``qa_generation.pairs``, as the recipe falls back): each pair has ``question``,
  ``answer``, ``question_complexity``, ``query_type``, ``reasoning_type``, ``segment_ids`` (chunk ids of the record),
  ``hop_count`` and ``hop_contexts`` (``[{"hop_number", "segment_ids", "summary"}]``);
- ``qa_evaluations.evaluations``: one judge result per deduplicated pair, in order, with ``overall.score`` (1-10).

Mapped to :class:`~embed_pipeline.core.records.QAPair`: ``question`` -> ``query``; the texts of the record's chunks
named by ``segment_ids`` -> positives (matched to our chunks, ``matching.py``); ``answer``, ``query_type``,
``reasoning_type``, ``hop_count`` as they are; ``hop_contexts`` -> their ``summary`` strings;
``overall.score`` -> ``quality_score``. Like the recipe, a pair citing a segment id its record lacks is dropped, and
a record whose evaluations do not line up one to one with its pairs gives no pairs (counted ``bad_score``);
a record without ``qa_evaluations`` at all gives pairs with ``min_quality_default``. Files may also be JSONL.
"""

from __future__ import annotations

from typing import Any

from embed_pipeline.stages.sdg.importer import fields
from embed_pipeline.stages.sdg.importer.state import ImportState, RawPair


def _recipe_pairs(record: dict) -> list | None:
    pairs = record.get("deduplicated_qa_pairs")
    if isinstance(pairs, list):
        return pairs
    generated = record.get("qa_generation")
    if isinstance(generated, dict):
        generated = generated.get("pairs")
    return generated if isinstance(generated, list) else None


def _recipe_scores(record: dict, count: int) -> tuple[list[float | None] | None, str | None]:
    """Per-pair judge scores, ``[None] * count`` without a judge, or ``(None, problem)``."""
    evaluations = record.get("qa_evaluations")
    if evaluations is None:
        return [None] * count, None
    if isinstance(evaluations, dict):
        evaluations = evaluations.get("evaluations")
    if not isinstance(evaluations, list):
        return None, "qa_evaluations has no 'evaluations' list"
    if len(evaluations) != count:
        return None, f"the record has {count} QA pairs but {len(evaluations)} evaluations"
    scores: list[float | None] = []
    for j, evaluation in enumerate(evaluations, start=1):
        overall = evaluation.get("overall") if isinstance(evaluation, dict) else None
        value = overall.get("score") if isinstance(overall, dict) else None
        score, problem = fields.score(value)
        if problem is None and score is not None and score > 10:
            problem = f"score {score!r} is outside the judge's 1-10"
        if problem:
            return None, f"evaluation {j}: overall.{problem}"
        scores.append(score)
    return scores, None


def read_recipe_record(record: Any, where: str, state: ImportState) -> None:
    """One recipe record into ``state``: a raw pair per usable QA pair, an error for each other one."""
    if not isinstance(record, dict) or "chunks" not in record:
        state.error("unknown_record_shape", where, fields.shape_hint(record))
        return
    qa_pairs = _recipe_pairs(record)
    if qa_pairs is None:
        state.error(
            "unknown_record_shape", where, "recipe record without a deduplicated_qa_pairs (or qa_generation) list"
        )
        return
    segments: dict[str, str] = {}
    for chunk in record.get("chunks") or []:
        if isinstance(chunk, dict) and isinstance(chunk.get("text"), str) and chunk.get("chunk_id") is not None:
            segments.setdefault(str(chunk["chunk_id"]), chunk["text"].strip())
    scores, problem = _recipe_scores(record, len(qa_pairs))
    if scores is None:
        for j in range(len(qa_pairs)):
            state.error("bad_score", where, f"QA pair {j + 1}: {problem}")
        return
    for j, pair in enumerate(qa_pairs):
        label = f"QA pair {j + 1}"
        if not isinstance(pair, dict):
            state.error("unknown_record_shape", where, f"{label} is not a JSON object")
            continue
        query = fields.text(pair.get("question")) or fields.text(pair.get("query"))
        if query is None:
            state.error("missing_query", where, f"{label} has no question")
            continue
        segment_ids = pair.get("segment_ids")
        if not isinstance(segment_ids, list) or not segment_ids:
            state.error("missing_positive", where, f"{label} has no segment_ids")
            continue
        keys = [str(int(s)) if isinstance(s, float) and s.is_integer() else str(s) for s in segment_ids]
        unknown = [k for k in keys if not segments.get(k)]
        if unknown:
            state.error(
                "unknown_positive_id",
                where,
                f"{label} cites segment ids {unknown} that are not among its record's chunks",
            )
            continue
        positive_ids = list(dict.fromkeys(state.matcher.resolve(segments[k]) for k in dict.fromkeys(keys)))
        raw = RawPair(where, query, positive_ids, "recipe", score=scores[j])
        state.raws.append(fields.with_metadata(raw, pair))
