"""The LLM-free synthetic query generator: training queries from the corpus itself, on CPU, in seconds.

No API key, no model, no network. Two kinds of query are made from every chunk; the chunk is the positive.
By default ``qa_splits`` trains on the keyword (and title) queries only and keeps the cloze sentences for
validation and test (``eval_only_query_types``): on real claims about SciFact abstracts, cloze training gave no
significant gain where keyword queries did (benchmarks/RESULTS.md).

1. **Inverse cloze** (``query_type="inverse_cloze"``, ``extractive=True``). From a chunk with at least
   ``min_chunk_sentences_for_cloze`` sentences, up to ``max_cloze_per_chunk`` informative sentences are drawn
   (seeded, weighted towards high quality) and each becomes a query, verbatim, so it is a substring of the chunk.
   Wherever such a pair is used (training, mining, evaluation) the sentence is removed from the positive first
   (that is what ``extractive`` tells the downstream stages), so the model must recognise the *context* a sentence
   came from rather than match a string - the inverse cloze task of Lee et al. (2019, ORQA). Headings, code,
   doctest lines, list-only fragments and sentences under ``min_sentence_words`` words are never drawn.
2. **Salient-term keyword queries** (``query_type="keyword"``, ``extractive=False``). TF-IDF is fitted on the
   given chunks with a small built-in tokenizer (identifiers such as ``heappush`` or ``os.path`` are terms,
   English stopwords are not). Each query is ``keyword_terms`` terms sampled (seeded, weighted by TF-IDF) from
   the chunk's ``keyword_pool`` best terms and written in the order they appear in the chunk - the terse
   search-box query a user types. Up to ``max_keyword_per_chunk`` distinct queries per chunk.

3. **Title queries** (``query_type="title"``, ``extractive=True``, with ``title_queries``). A document whose first
   chunk starts with a title-like first line (3-30 words, at least three content terms) gives that title as a query
   whose positives are all its chunks (taken out of the first): a short statement of what the whole document is
   about, the shape of many real questions (a scientific claim and the abstract it cites). One per document.

**Quality score (0-10)**, so the downstream filter (default threshold 7.0) can drop weak pairs:

- cloze: ``10 x length x (0.3 content + 0.7 distinctiveness) x uniqueness x penalties``. *length* is 1 for
  8-40 words and falls off outside; *content* is the share of content words (non-stopwords), 55 % or more counting
  full; *distinctiveness* is the sentence's mean term IDF against the corpus's typical (median) sentence: IDF 1
  (words in every chunk) scores 0, the median sentence about 0.75, 1.25 x the median or more scores 1;
  *uniqueness* is 0.3 when the same sentence occurs in more than one chunk (boilerplate makes the positive
  ambiguous), else 1; *penalties*: fewer than three distinct content terms scale the score down proportionally,
  and a sentence mostly in capitals (licence text, banners) is halved.
- title: ``7 + 3 x mean normalised TF-IDF`` of its terms (a title that passed the shape test is kept by the
  default filter).
- keyword: ``10 x mean normalised TF-IDF`` of the chosen terms, reduced in proportion when fewer than
  ``keyword_terms`` terms were available. A term's normalised TF-IDF is its IDF relative to the corpus's highest
  (a term found in one chunk only), mapped so that 38 % of it or less counts 0 and 100 % counts 1, times a modest
  bonus for repetition in the chunk (x 1.17 for two occurrences), capped at 1: a query of words found all over the
  corpus ("returns hash object string") scores low however often the chunk repeats them.

On the standard-library demo corpus about three quarters of both kinds score 7 or more; boilerplate, generic and
stopword-heavy queries fall below. On a tiny corpus almost every term is unique to its chunk, so keyword scores
saturate near 10 there.

Deterministic for a seed: each chunk draws from its own random generator seeded with ``seed``, the chunk id and
the query kind, so adding a document never changes which random draws other chunks get (their TF-IDF weights,
and so their queries, may still shift slightly with the new vocabulary).

    python -m embed_pipeline.stages.sdg.offline chunks.jsonl OUT_DIR
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import Chunk, QAPair, duplicate_ids

GENERATOR_NAME = "offline-v1"

_log = logging.getLogger("embed_pipeline.sdg.offline")


class OfflineGeneratorConfig(BaseModel):
    """Settings of the LLM-free generator (inverse cloze + salient-term keyword queries)."""

    seed: int = Field(42, description="Seed for every random draw; the same seed and chunks give the same queries.")
    max_cloze_per_chunk: int = Field(
        2, ge=0, description="Most inverse-cloze queries (sentences used as queries) drawn from one chunk."
    )
    min_chunk_sentences_for_cloze: int = Field(
        3,
        ge=2,
        description="A chunk needs at least this many sentences to give cloze queries, so enough context remains "
        "once the query sentence is removed from the positive.",
    )
    min_sentence_words: int = Field(6, ge=1, description="Shorter sentences are never used as cloze queries.")
    max_keyword_per_chunk: int = Field(2, ge=0, description="Most keyword queries made from one chunk.")
    keyword_terms: int = Field(4, ge=1, description="Terms in one keyword query.")
    keyword_pool: int = Field(
        10, ge=1, description="Keyword terms are sampled from this many of the chunk's highest TF-IDF terms."
    )
    title_queries: bool = Field(
        False,
        description="Also use each document's title (its first line, when it reads as one: 3-30 words, at least "
        "three content terms) as a query whose positives are all the document's chunks, the title taken out of the "
        "first: a summary of the whole document, as a user's question about it often is.",
    )


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and TF-IDF

STOPWORDS = frozenset(
    """
    a about above after again against all almost also although always am among an and another any anyone anything
    are aren't around as at be became because become becomes been before being below between both but by can
    cannot could couldn't did didn't do does doesn't doing don't done down during each either else etc even ever
    every few for from further get gets getting given gives go goes had has hasn't have haven't having he her here
    hers herself him himself his how however i if in into is isn't it it's its itself just least less let lets like
    made make makes many may me might more most much must my myself need needs neither never no nor not now of off
    often on once one only onto or other others otherwise our ours ourselves out over own per perhaps rather really
    same see seen shall she should shouldn't since so some something such than that that's the their theirs them
    themselves then there there's therefore these they this those though through thus to too toward towards under
    unless until up upon us use used uses using usually very via was wasn't way we well were weren't what whatever
    when whenever where whereas wherever whether which while who whom whose why will with within without won't
    would wouldn't yet you your yours yourself yourselves e.g i.e eg ie a.k.a
    """.split()
)

# Words and identifiers, any script: "heappush", "os.path", "__init__", "sha256", "JSONEncoder", "Häring"
# (a trailing "." is not kept; a token starts with a letter or "_").
_TOKEN_RE = re.compile(r"[^\W\d][\w']*(?:\.[^\W\d]\w*)*")
_HEADING_RE = re.compile(r"^\s{0,3}(#{1,6}\s|#{1,6}$|[-=~^*]{3,}\s*$)")
# How code-like a character is; backticks and asterisks are inline markup in prose, parentheses are common there.
_CODE_CHARS = {**dict.fromkeys("{}[]=<>;|\\$/+%", 1.0), "(": 0.5, ")": 0.5}


def _term_key(token: str) -> str | None:
    """The TF-IDF term for a token, or None for stopwords and fragments too short to mean anything."""
    key = token.lower().strip("'")
    if key.endswith("'s"):
        key = key[:-2]
    if key in STOPWORDS or not key.strip("_"):
        return None
    if len(key) < 3 and not any(ch.isdigit() or ch in "._" for ch in key):
        return None
    return key


def tokenize(text: str) -> list[tuple[str, str]]:
    """``(term, surface form)`` for every content term of ``text``, in order."""
    out = []
    for match in _TOKEN_RE.finditer(text):
        surface = match.group(0).rstrip("'")
        if surface.endswith("'s"):
            surface = surface[:-2]
        key = _term_key(surface)
        if key is not None:
            out.append((key, surface))
    return out


@dataclass
class TfIdf:
    """Smoothed IDF, ``ln((1 + N) / (1 + df)) + 1``, fitted on the chunks of one corpus."""

    num_docs: int
    df: Counter = field(default_factory=Counter)

    @classmethod
    def fit(cls, term_lists: Sequence[Sequence[str]]) -> TfIdf:
        df: Counter = Counter()
        for terms in term_lists:
            df.update(set(terms))
        return cls(num_docs=len(term_lists), df=df)

    def idf(self, term: str) -> float:
        return math.log((1 + self.num_docs) / (1 + self.df.get(term, 0))) + 1.0

    @property
    def max_idf(self) -> float:
        """The IDF of a term found in a single chunk: the most distinctive a term can be here."""
        return math.log((1 + self.num_docs) / 2) + 1.0

    def weights(self, terms: Sequence[str]) -> dict[str, float]:
        """Sublinear TF x IDF for the terms of one chunk."""
        return {t: (1.0 + math.log(n)) * self.idf(t) for t, n in Counter(terms).items()}


# ---------------------------------------------------------------------------------------------------------------
# Inverse cloze


def cloze_candidate(sentence: str, min_words: int) -> str | None:
    """The part of a chunk sentence usable as a cloze query, or None.

    Leading Markdown heading lines are dropped (the chunker may glue a heading to the sentence after it); a
    heading-only line, code, doctest lines, tables and too-short sentences give None. What is returned is always a
    substring of ``sentence``.
    """
    lines = sentence.strip().splitlines()
    while lines and (not lines[0].strip() or _HEADING_RE.match(lines[0])):
        lines.pop(0)
    text = "\n".join(lines).strip()
    if not text or any(_HEADING_RE.match(ln) for ln in lines):
        return None
    if "```" in text or ">>>" in text or any(ln.startswith(("    ", "\t")) for ln in lines[1:]):
        return None
    if text.startswith(("|", "- ", "* ", "+ ")) and text.count("|") >= 2:
        return None  # a table row
    words = text.split()
    if len(words) < min_words:
        return None
    non_space = [ch for ch in text if not ch.isspace()]
    if sum(_CODE_CHARS.get(ch, 0.0) for ch in non_space) / len(non_space) > 0.06:
        return None  # code-like: brackets, operators, backticks
    wordlike = sum(1 for w in words if sum(ch.isalpha() for ch in w) >= max(1, len(w) // 2))
    if wordlike / len(words) < 0.7:
        return None  # mostly numbers, paths or symbols
    return text


def _length_factor(n_words: int) -> float:
    if n_words < 8:
        return max(0.0, 1.0 - 0.15 * (8 - n_words))
    if n_words > 40:
        return max(0.4, 1.0 - (n_words - 40) / 60)
    return 1.0


def _normalise_sentence(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass
class _Corpus:
    """What scoring needs to know about the whole corpus."""

    tfidf: TfIdf
    typical_mean_idf: float  # median over candidate sentences of their mean term IDF
    sentence_chunk_count: Counter  # normalised sentence -> number of chunks containing it


def _mean_idf(terms: Sequence[str], tfidf: TfIdf) -> float:
    unique = set(terms)
    return sum(tfidf.idf(t) for t in unique) / len(unique) if unique else 1.0


def cloze_quality(sentence: str, corpus: _Corpus) -> float:
    """0-10: length in the 8-40 word sweet spot, share of content words, distinctiveness, uniqueness."""
    all_words = _TOKEN_RE.findall(sentence)
    terms = [t for t, _ in tokenize(sentence)]
    if not all_words or not terms:
        return 0.0
    length = _length_factor(len(sentence.split()))
    content = min(1.0, max(0.0, (len(terms) / len(all_words) - 0.2) / 0.35))
    # Distinctiveness: mean IDF relative to the corpus's typical sentence (1.0 at or above 1.25x typical,
    # 0.8 at typical, 0 at IDF 1, i.e. words found in every chunk).
    reference = max(corpus.typical_mean_idf * 1.25, 1.0 + 1e-6)
    distinct = min(1.0, max(0.0, (_mean_idf(terms, corpus.tfidf) - 1.0) / (reference - 1.0)))
    unique = 0.3 if corpus.sentence_chunk_count[_normalise_sentence(sentence)] > 1 else 1.0
    few_terms = min(1.0, len(set(terms)) / 3)  # "It is what it is." has nothing to retrieve by
    letters = [ch for ch in sentence if ch.isalpha()]
    shouting = 0.5 if sum(ch.isupper() for ch in letters) > 0.5 * len(letters) else 1.0  # licence text, banners
    return 10.0 * length * (0.3 * content + 0.7 * distinct) * unique * few_terms * shouting


def _weighted_sample(items: Sequence, weights: Sequence[float], k: int, rng: random.Random) -> list:
    """k distinct items, drawn without replacement with probability proportional to weight (Efraimidis-Spirakis)."""
    keyed = [(rng.random() ** (1.0 / max(w, 1e-9)), i) for i, w in enumerate(weights)]
    keyed.sort(reverse=True)
    return [items[i] for _, i in keyed[:k]]


# ---------------------------------------------------------------------------------------------------------------
# Generation


def _normalised_weight(term: str, count: int, tfidf: TfIdf) -> float:
    """A term's TF-IDF on a 0-1 scale.

    IDF relative to the corpus's highest (a term found in one chunk only) is mapped so 38 % of it or less is 0;
    repetition in the chunk adds a modest bonus (x 1.17 for two occurrences), so a word found all over the corpus
    cannot become salient just by being repeated.
    """
    specificity = min(1.0, max(0.0, (tfidf.idf(term) / tfidf.max_idf - 0.38) / 0.57))
    return min(1.0, specificity * (1.0 + 0.25 * math.log(count)))


def _chunk_rng(seed: int, chunk_id: str, kind: str) -> random.Random:
    return random.Random(f"{seed}:{chunk_id}:{kind}")


def _cloze_pairs(chunk: Chunk, corpus: _Corpus, config: OfflineGeneratorConfig) -> list[QAPair]:
    if config.max_cloze_per_chunk == 0 or len(chunk.sentences) < config.min_chunk_sentences_for_cloze:
        return []
    candidates: list[tuple[str, float]] = []
    seen: set[str] = set()
    for sentence in chunk.sentences:
        text = cloze_candidate(sentence, config.min_sentence_words)
        if text is None or text in seen or text not in chunk.text:
            continue
        seen.add(text)
        candidates.append((text, cloze_quality(text, corpus)))
    if not candidates:
        return []
    rng = _chunk_rng(config.seed, chunk.chunk_id, "cloze")
    # Strongly favour the better sentences, yet let the seed choose among comparable ones.
    weights = [(0.05 + score / 10.0) ** 4 for _, score in candidates]
    chosen = _weighted_sample(candidates, weights, config.max_cloze_per_chunk, rng)
    chosen.sort(key=lambda c: chunk.text.index(c[0]))
    return [
        _pair(chunk, f"{chunk.chunk_id}-c{j}", text, "inverse_cloze", score, extractive=True)
        for j, (text, score) in enumerate(chosen)
    ]


def _keyword_pairs(
    chunk: Chunk, tokens: list[tuple[str, str]], tfidf: TfIdf, config: OfflineGeneratorConfig
) -> list[QAPair]:
    if config.max_keyword_per_chunk == 0 or not tokens:
        return []
    first_pos: dict[str, int] = {}
    surface: dict[str, str] = {}
    for pos, (term, form) in enumerate(tokens):
        if term not in first_pos:
            # "Heap" at a sentence start is typed "heap"; identifiers and acronyms (JSONEncoder, SIGCHLD) keep case.
            first_pos[term], surface[term] = pos, form.lower() if form.istitle() and form.isalpha() else form
    weights = tfidf.weights([t for t, _ in tokens])
    pool = sorted(weights, key=lambda t: (-weights[t], first_pos[t]))[: config.keyword_pool]
    k = min(config.keyword_terms, len(pool))
    if k < min(2, config.keyword_terms):
        return []  # a single generic word is not a query
    counts = Counter(t for t, _ in tokens)
    normalised = {t: _normalised_weight(t, counts[t], tfidf) for t in pool}
    rng = _chunk_rng(config.seed, chunk.chunk_id, "keyword")
    queries: list[tuple[str, float]] = []
    seen: set[frozenset[str]] = set()
    max_distinct = math.comb(len(pool), k)
    for _ in range(20 * config.max_keyword_per_chunk):
        if len(queries) >= min(config.max_keyword_per_chunk, max_distinct):
            break
        terms = _weighted_sample(pool, [weights[t] for t in pool], k, rng)
        if frozenset(terms) in seen:
            continue
        seen.add(frozenset(terms))
        terms.sort(key=first_pos.__getitem__)
        score = 10.0 * statistics.fmean(normalised[t] for t in terms) * (k / config.keyword_terms)
        queries.append((" ".join(surface[t] for t in terms), score))
    return [
        _pair(chunk, f"{chunk.chunk_id}-k{j}", query, "keyword", score, extractive=False)
        for j, (query, score) in enumerate(queries)
    ]


def _pair(
    chunk: Chunk,
    query_id: str,
    query: str,
    query_type: str,
    score: float,
    extractive: bool,
    positives: Sequence[Chunk] = (),
) -> QAPair:
    """A pair made from ``chunk``, its positives ``positives`` (default: the chunk alone)."""
    return QAPair(
        query_id=query_id,
        query=query,
        positive_chunk_ids=[c.chunk_id for c in positives or [chunk]],
        doc_ids=[chunk.doc_id],
        query_type=query_type,
        reasoning_type=None,
        hop_count=1,
        quality_score=round(min(10.0, max(0.0, score)), 2),
        generator=GENERATOR_NAME,
        extractive=extractive,
    )


def _title_pairs(doc_chunks: list[Chunk], tfidf: TfIdf) -> list[QAPair]:
    """The document's title as a query for all its chunks (see ``title_queries``), or nothing."""
    first = min(doc_chunks, key=lambda c: c.index)
    if first.index != 0 or len(first.sentences) < 2:
        return []
    title = first.sentences[0].strip().lstrip("#").strip()
    words = title.split()
    terms = {t for t, _ in tokenize(title)}
    if not 3 <= len(words) <= 30 or len(terms) < 3 or title not in first.text:
        return []
    # A title that passed the shape test is a good query: 7 (the default filter) to 10 by how distinctive its terms
    # are on the corpus's 0-1 scale, as keyword queries are scored.
    score = 7.0 + 3.0 * statistics.fmean(_normalised_weight(t, 1, tfidf) for t in terms)
    ordered = sorted(doc_chunks, key=lambda c: c.index)
    # extractive: the title is taken out of the first chunk wherever the pair is used (a no-op for the others).
    return [_pair(first, f"{first.chunk_id}-t0", title, "title", score, extractive=True, positives=ordered)]


def _fit_corpus(chunks: Sequence[Chunk], chunk_tokens: list[list[tuple[str, str]]], min_words: int) -> _Corpus:
    tfidf = TfIdf.fit([[t for t, _ in tokens] for tokens in chunk_tokens])
    sentence_chunk_count: Counter = Counter()
    mean_idfs = []
    for chunk in chunks:
        per_chunk = set()
        for sentence in chunk.sentences:
            text = cloze_candidate(sentence, min_words)
            if text is None:
                continue
            per_chunk.add(_normalise_sentence(text))
            terms = [t for t, _ in tokenize(text)]
            if terms:
                mean_idfs.append(_mean_idf(terms, tfidf))
        sentence_chunk_count.update(per_chunk)
    typical = statistics.median(mean_idfs) if mean_idfs else tfidf.max_idf
    return _Corpus(tfidf=tfidf, typical_mean_idf=typical, sentence_chunk_count=sentence_chunk_count)


def generate_offline(
    chunks: Sequence[Chunk],
    config: OfflineGeneratorConfig | None = None,
    logger: logging.Logger | None = None,
    only_chunks: Collection[str] | None = None,
    only_docs: Collection[str] | None = None,
) -> list[QAPair]:
    """Inverse-cloze and keyword queries for ``chunks`` (see the module docstring), in chunk order.

    TF-IDF is always fitted on all ``chunks``; ``only_chunks`` / ``only_docs`` limit the chunks that get cloze and
    keyword queries and the documents that get a title query (a refresh asks only for what is new or edited)."""
    config = config or OfflineGeneratorConfig()
    log = logger or _log
    duplicates = duplicate_ids(c.chunk_id for c in chunks)
    if duplicates:
        raise ValueError(
            f"Chunk ids must be unique, found duplicates {duplicates[:5]} ({len(duplicates)} in all); "
            "re-materialize the chunks asset."
        )
    if not chunks:
        log.info("Offline generator: no chunks, no queries.")
        return []
    chunk_tokens = [tokenize(c.text) for c in chunks]
    corpus = _fit_corpus(chunks, chunk_tokens, config.min_sentence_words)
    progress = Progress("offline query generation", len(chunks), log, unit="chunks")
    pairs: list[QAPair] = []
    for chunk, tokens in zip(chunks, chunk_tokens, strict=True):
        if only_chunks is None or chunk.chunk_id in only_chunks:
            pairs += _cloze_pairs(chunk, corpus, config)
            pairs += _keyword_pairs(chunk, tokens, corpus.tfidf, config)
        progress.update(1, extra=f"{len(pairs)} queries")
    if config.title_queries:
        by_doc: dict[str, list[Chunk]] = {}
        for chunk in chunks:
            by_doc.setdefault(chunk.doc_id, []).append(chunk)
        pairs += [
            p
            for doc, doc_chunks in by_doc.items()
            if only_docs is None or doc in only_docs
            for p in _title_pairs(doc_chunks, corpus.tfidf)
        ]
    return pairs


def main(argv: list[str] | None = None) -> int:
    from embed_pipeline.core.artifacts import read_jsonl
    from embed_pipeline.stages.sdg.io import write_qa_pairs

    parser = argparse.ArgumentParser(description="LLM-free synthetic queries (inverse cloze + keyword) for chunks.")
    parser.add_argument("chunks", type=Path, help="chunks.jsonl: one Chunk record per line.")
    parser.add_argument("out_dir", type=Path, help="Folder for qa_pairs.jsonl and manifest.json.")
    parser.add_argument("--seed", type=int, default=42, help="Random seed.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    pairs = generate_offline(read_jsonl(args.chunks, Chunk), OfflineGeneratorConfig(seed=args.seed))
    manifest = write_qa_pairs(pairs, args.out_dir)
    print(f"Wrote {manifest['num_pairs']} queries to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
