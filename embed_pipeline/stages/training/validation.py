"""Validation by retrieval: the validation split's queries searched against the mining corpus, scored by nDCG@10.

The recipe's FAQ calls validation loss "only a proxy": the loss rewards separating a query's positive from its few
mined negatives, while what a user gets is a ranking over the whole corpus. So checkpoints are chosen on what the
product is measured by, nDCG@10, on queries of documents training never saw (the val split) against every passage
training may see (the mining corpus: test documents excluded, so the test set stays untouched by selection).
The folder is BEIR (``training_examples`` writes it as ``val_retrieval/``; ``qrels/test.tsv`` as ``eval_set``'s).
"""

from __future__ import annotations

import logging
from pathlib import Path

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.stages.evaluation import load_beir, mean_metrics, per_query_metrics, search

SELECTION_K = 10
_QUIET = logging.getLogger("embed_pipeline.training.validation.encode")  # no per-batch progress lines
_QUIET.setLevel(logging.WARNING)


class RetrievalValidation:
    """nDCG@10 (and Recall@10) of an encoder on a BEIR folder; the folder is read once."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.data = load_beir(self.folder)

    @property
    def num_queries(self) -> int:
        return len(self.data.queries)

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        qids, cids = list(self.data.queries), list(self.data.corpus)
        q = encoder.encode([self.data.queries[i] for i in qids], "query", logger=_QUIET)
        c = encoder.encode([self.data.corpus[i] for i in cids], "passage", logger=_QUIET)
        results = search(q, c, qids, cids, top_k=SELECTION_K + 1)
        means = mean_metrics(per_query_metrics(self.data.qrels, results, [SELECTION_K]))
        return {"ndcg_at_10": means[f"ndcg_at_{SELECTION_K}"], "recall_at_10": means[f"recall_at_{SELECTION_K}"]}
