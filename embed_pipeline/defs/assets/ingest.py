"""`documents` and `chunks`: from a corpus folder to sentence chunks."""

import dagster as dg

from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import counts_table, sample_table
from embed_pipeline.defs.stage_asset import Described, StepContext, stage_asset
from embed_pipeline.stages.chunking import ChunkingConfig, ChunksOutput
from embed_pipeline.stages.documents import DocumentsConfig, DocumentsOutput

DocumentsRunConfig = run_config_for(DocumentsConfig, "DocumentsRunConfig")
ChunksRunConfig = run_config_for(ChunkingConfig, "ChunksRunConfig")


def _describe_documents(step: StepContext, done: DocumentsOutput) -> Described:
    found = done.found
    return Described(
        {
            "num_documents": len(found.documents),
            "num_skipped": len(found.skipped),
            "total_bytes": found.total_bytes,
            "skipped_files": sample_table([s.model_dump() for s in found.skipped], ["path", "reason", "detail"], 50),
            "skip_reasons": counts_table(done.manifest.get("skip_reasons", {}), "reason"),
            "sample": sample_table(
                [{**d.model_dump(), "text": d.text[:120]} for d in found.documents], ["doc_id", "num_bytes", "text"]
            ),
        }
    )


def _describe_chunks(step: StepContext, done: ChunksOutput) -> Described:
    return Described(
        {
            "num_chunks": len(done.chunks),
            "num_documents": done.num_documents,
            "manifest": dg.MetadataValue.json(done.manifest),
            "sample": sample_table([c.model_dump() for c in done.chunks], ["chunk_id", "doc_id", "text"]),
        }
    )


documents = stage_asset(
    "documents",
    key="documents",
    group="data",
    kinds={"python"},
    code_version="1",
    run_config=DocumentsRunConfig,
    inputs=lambda step: {"corpus_dir": step.resources.storage.corpus_dir(step.corpus)},
    describe=_describe_documents,
    description="Text files found under the corpus folder, validated and content-hashed; skipped files listed "
    "with why.",
)

chunks = stage_asset(
    "chunks",
    key="chunks",
    ins=("documents",),
    group="data",
    kinds={"python"},
    code_version="1",
    run_config=ChunksRunConfig,
    describe=_describe_chunks,
    description="Paragraph-aware sentence chunks with stable, unique ids.",
)
