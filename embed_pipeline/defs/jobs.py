"""Jobs: the whole graph for one corpus partition."""

import dagster as dg

from embed_pipeline.defs.partitions import corpus_partitions

embed_job = dg.define_asset_job(
    "embed_pipeline_job",
    selection=dg.AssetSelection.all(),
    partitions_def=corpus_partitions,
    description="Documents to measured retrieval gain, for one corpus.",
)

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets("documents", "chunks"),
    partitions_def=corpus_partitions,
    description="Read and chunk a corpus's documents only (seconds, no model): check new corpora before training.",
)
