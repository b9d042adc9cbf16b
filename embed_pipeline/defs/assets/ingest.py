"""`documents` and `chunks`: from a corpus folder to sentence chunks."""

import time

import dagster as dg

from embed_pipeline.core.artifacts import read_jsonl
from embed_pipeline.core.records import Document
from embed_pipeline.defs.config import run_config_for, to_stage
from embed_pipeline.defs.metadata import counts_table, path_value, sample_table, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import PipelineStorage
from embed_pipeline.stages.chunking import ChunkingConfig, chunk_documents, write_chunks
from embed_pipeline.stages.documents import DocumentsConfig, discover_documents, write_documents

DocumentsRunConfig = run_config_for(DocumentsConfig, "DocumentsRunConfig")
ChunksRunConfig = run_config_for(ChunkingConfig, "ChunksRunConfig")


@dg.asset(partitions_def=corpus_partitions, code_version="1", group_name="data", kinds={"python"})
def documents(
    context: dg.AssetExecutionContext, config: DocumentsRunConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    """Text files found under the corpus folder, validated and content-hashed; skipped files listed with why."""
    corpus = context.partition_key
    start = time.perf_counter()
    result = discover_documents(storage.corpus_dir(corpus), to_stage(config, DocumentsConfig), logger=context.log)
    out = storage.asset_dir(corpus, "documents")
    manifest = write_documents(result, out)
    return dg.MaterializeResult(
        metadata={
            "num_documents": len(result.documents),
            "num_skipped": len(result.skipped),
            "total_bytes": sum(d.num_bytes for d in result.documents),
            "skipped_files": sample_table([s.model_dump() for s in result.skipped], ["path", "reason", "detail"], 50),
            "skip_reasons": counts_table(manifest.get("skip_reasons", {}), "reason"),
            "sample": sample_table(
                [{**d.model_dump(), "text": d.text[:120]} for d in result.documents], ["doc_id", "num_bytes", "text"]
            ),
            "path": path_value(out),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )


@dg.asset(partitions_def=corpus_partitions, code_version="1", group_name="data", deps=[documents], kinds={"python"})
def chunks(
    context: dg.AssetExecutionContext, config: ChunksRunConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    """Paragraph-aware sentence chunks with stable, unique ids."""
    corpus = context.partition_key
    start = time.perf_counter()
    docs = read_jsonl(upstream_file(storage.asset_dir(corpus, "documents"), "documents.jsonl", "documents"), Document)
    result = chunk_documents(docs, to_stage(config, ChunkingConfig), logger=context.log)
    out = storage.asset_dir(corpus, "chunks")
    manifest = write_chunks(result, out)
    return dg.MaterializeResult(
        metadata={
            "num_chunks": len(result),
            "num_documents": len(docs),
            "manifest": dg.MetadataValue.json(manifest),
            "sample": sample_table([c.model_dump() for c in result], ["chunk_id", "doc_id", "text"]),
            "path": path_value(out),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
