"""Chat messages of the LLM steps: artifact extraction, QA generation (which may list the artifacts first), judge.

Every system message names :data:`PROMPT_VERSION`. The cache key of an LLM answer is a hash of the exact messages
(with model and sampling parameters), so changing a prompt - and bumping the version with it - invalidates the
cached answers of that step and of the steps that depend on it, and nothing else.

The text of a unit (one chunk, or a bundle of chunks from several documents) is shown as numbered segments,
``[S1] text``, ``[S2] text``; the LLM cites them by id and the generator maps the ids back to chunk ids.

The builders are pure functions of their arguments, so the same unit gives byte-identical messages in every run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from embed_pipeline.stages.sdg.llm.schemas import ARTIFACT_TYPES, ArtifactExtraction, GeneratedPair

PROMPT_VERSION = "v2"

# Markers at the start of each system message: they make the step visible in request logs (and tests' fake servers).
ARTIFACTS_MARKER = "[embed_pipeline sdg artifact-extraction]"
QA_MARKER = "[embed_pipeline sdg qa-generation]"
JUDGE_MARKER = "[embed_pipeline sdg quality-judge]"

# Phrases that make a question depend on the text it was generated from; the generator drops such questions.
NON_STANDALONE_PHRASES = (
    "in the context",
    "according to the text",
    "according to the passage",
    "according to the document",
    "the passage",
    "the document",
    "this text",
    "the text above",
    "the given text",
    "the provided text",
    "the excerpt",
    "the segment",
)

_SEGMENT_REF_RE = re.compile(r"\[\s*S\d+\s*\]|\bsegments?\s+S\d+\b", re.IGNORECASE)

QUERY_TYPE_HINTS = {
    "multi_hop": "needs two or more facts combined (from different sentences or segments); hop_count >= 2",
    "structural": "about how things are organised: components, parameters, steps, lists, what belongs to what",
    "contextual": "about purpose, conditions, consequences or the situation in which something applies",
}
REASONING_TYPE_HINTS = {
    "factual": "a fact stated in the text",
    "relational": "how two things relate or compare",
    "inferential": "a conclusion the text supports without stating it",
    "temporal": "order, timing, versions or change over time",
    "procedural": "how to do something, the steps",
    "visual": "what a figure, table, diagram, layout or example shown in the text presents",
    "causal": "why something happens, cause and effect",
}
ARTIFACT_HINTS = {
    "key_concepts": "central ideas",
    "entities": "named things (products, modules, classes, organisations, people)",
    "technical_terms": "domain terms and jargon",
    "identifiers": "exact identifiers: function or class names, bug ids, product ids, versions, error codes",
    "relationships": "how two things relate, one short sentence each",
    "processes": "procedures or sequences of steps, one short sentence each",
    "insights": "non-obvious conclusions the text supports, one short sentence each",
}


def _system(marker: str, role_text: str) -> str:
    return f"{marker} (prompt version {PROMPT_VERSION})\n{role_text}"


def segment_ids(n: int) -> list[str]:
    """The ids shown for ``n`` segments: ``["S1", ..., "Sn"]``."""
    return [f"S{i}" for i in range(1, n + 1)]


def format_segments(texts: Sequence[str]) -> str:
    """``[S1] text`` blocks separated by blank lines; whitespace inside a segment is collapsed to single spaces."""
    return "\n\n".join(f"[S{i}] {' '.join(text.split())}" for i, text in enumerate(texts, start=1))


def artifact_messages(texts: Sequence[str], max_per_type: int) -> list[dict[str, str]]:
    """Messages asking for up to ``max_per_type`` artifacts of each type from the segments."""
    kinds = "\n".join(f"- {name}: {ARTIFACT_HINTS[name]}" for name in ARTIFACT_TYPES)
    system = _system(
        ARTIFACTS_MARKER,
        "You read technical text and extract the artifacts a search user could ask about. Copy names and "
        "identifiers exactly as written. Use only what the text says. Answer with one JSON object.",
    )
    user = (
        f"Extract up to {max_per_type} items of each type (fewer, or none, when the text has fewer):\n{kinds}\n\n"
        f"Text segments:\n{format_segments(texts)}\n\n"
        'Answer as JSON: {"key_concepts": [...], "entities": [...], "technical_terms": [...], "identifiers": '
        '[...], "relationships": [...], "processes": [...], "insights": [...]} with strings in every list.'
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _artifact_lines(artifacts: ArtifactExtraction) -> str:
    lines = [
        f"- {name.replace('_', ' ')}: " + "; ".join(getattr(artifacts, name))
        for name in ARTIFACT_TYPES
        if getattr(artifacts, name)
    ]
    return "\n".join(lines) if lines else "- (none extracted)"


def _count_lines(counts: dict[str, int], hints: dict[str, str], scale: int) -> str:
    return "\n".join(
        f"- {name} ({n * scale}): {hints.get(name, 'as the name says')}" for name, n in counts.items() if n > 0
    )


def qa_messages(
    texts: Sequence[str],
    artifacts: ArtifactExtraction | None,
    query_counts: dict[str, int],
    reasoning_counts: dict[str, int],
    max_artifacts_per_type: int = 2,
    multi_document: bool = False,
) -> list[dict[str, str]]:
    """Messages asking for ``sum(query_counts) * len(texts)`` standalone question-answer pairs about the segments.

    With ``artifacts`` None the answer lists the segments' artifacts first (``"artifacts"``, then ``"pairs"``): one
    call does what the recipe does in two, and the listing still guides the questions that follow it.
    """
    ids = segment_ids(len(texts))
    n = len(texts)
    num_pairs = sum(query_counts.values()) * n
    per_segment = f" ({sum(query_counts.values())} per segment, every segment asked about)" if n > 1 else ""
    multi = (
        " The segments come from different documents: make the multi_hop questions connect facts from segments "
        "of different documents where the text allows it."
        if multi_document
        else ""
    )
    system = _system(
        QA_MARKER,
        "You write question-answer pairs for training and evaluating a search engine over technical documents. "
        "Each question is what a real user would type to find the information, and each answer is supported by "
        "the segments it cites. Answer with one JSON object.",
    )
    if artifacts is None:
        kinds = "\n".join(f"- {name}: {ARTIFACT_HINTS[name]}" for name in ARTIFACT_TYPES)
        cap = max_artifacts_per_type * n
        first = (
            f"First list the artifacts a search user could ask about, up to {cap} of each type (fewer, or none, "
            f"when the text has fewer), copying names and identifiers exactly:\n{kinds}\n"
            "Then use them to choose what to ask about.\n\n"
        )
        answer_format = (
            'Answer as JSON: {"artifacts": {"key_concepts": [...], "entities": [...], "technical_terms": [...], '
            '"identifiers": [...], "relationships": [...], "processes": [...], "insights": [...]}, "pairs": '
            '[{"question": "...", "answer": "...", "query_type": "...", "reasoning_type": "...", "segment_ids": '
            '["S1"], "hop_count": 1, "hop_contexts": ["..."]}]}'
        )
    else:
        listed = _artifact_lines(artifacts)
        first = f"Artifacts found in the segments (use them to choose what to ask about):\n{listed}\n\n"
        answer_format = (
            'Answer as JSON: {"pairs": [{"question": "...", "answer": "...", "query_type": "...", '
            '"reasoning_type": "...", "segment_ids": ["S1"], "hop_count": 1, "hop_contexts": ["..."]}]}'
        )
    user = (
        f"Text segments:\n{format_segments(texts)}\n\n"
        f"{first}"
        f"Write exactly {num_pairs} question-answer pairs{per_segment}.\n"
        f"Query types (query_type, with the number of pairs of each):\n"
        f"{_count_lines(query_counts, QUERY_TYPE_HINTS, n)}\n"
        f"Reasoning types (reasoning_type, with the number of pairs of each; query_type and reasoning_type are "
        f"separate fields; where the text does not support a reasoning type, use another listed one):\n"
        f"{_count_lines(reasoning_counts, REASONING_TYPE_HINTS, n)}\n\n"
        "Rules:\n"
        "- Every question stands alone: it names the specific module, function, product or concept it is about, "
        'and never refers to the text ("in the context", "according to the text", "the passage", "the '
        'document", "this text") or to segment ids.\n'
        "- Questions differ from each other; do not ask the same thing twice in other words.\n"
        f"- segment_ids: the ids of the segments that support the answer, from {', '.join(ids)}.{multi}\n"
        "- hop_count: the number of distinct facts needed to answer (1 for a single fact).\n"
        "- hop_contexts: one short quote or paraphrase from the text per hop.\n"
        "- query_type and reasoning_type: exactly one of the names listed above.\n\n"
        f"{answer_format}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_messages(texts: Sequence[str], pairs: Sequence[GeneratedPair]) -> list[dict[str, str]]:
    """Messages asking the judge to score every pair (numbered from 0) 1-10 on five criteria."""
    listed = "\n\n".join(
        f"Pair {i}:\nQuestion: {p.question}\nAnswer: {p.answer}\nCited segments: {', '.join(p.segment_ids)}"
        for i, p in enumerate(pairs)
    )
    system = _system(
        JUDGE_MARKER,
        "You are a strict reviewer of question-answer pairs meant for training a search engine. You score each "
        "pair against the text segments it was written from. Answer with one JSON object.",
    )
    user = (
        f"Text segments:\n{format_segments(texts)}\n\n"
        f"Pairs to score:\n{listed}\n\n"
        "Score every pair from 1 (bad) to 10 (excellent) on:\n"
        "- relevance: a real user could plausibly search for this;\n"
        "- accuracy: the answer is correct given the segments;\n"
        "- context_support: the cited segments contain what the answer needs;\n"
        "- clarity: the question is clear, specific and understandable without the text;\n"
        "- overall: its value as a training example (low when any of the above is poor).\n"
        f"Return exactly one score object per pair, with its index (0 to {len(pairs) - 1}), in order, and no "
        "rationale.\n\n"
        'Answer as JSON: {"scores": [{"index": 0, "relevance": 8, "accuracy": 9, "context_support": 9, '
        '"clarity": 8, "overall": 8}]}'
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def is_standalone(question: str) -> bool:
    """False when the question contains a phrase that points back at the source text or a segment id."""
    lowered = " ".join(question.lower().split())
    if any(phrase in lowered for phrase in NON_STANDALONE_PHRASES):
        return False
    return _SEGMENT_REF_RE.search(question) is None
