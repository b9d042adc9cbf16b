"""One small factory that turns a stage into its Dagster asset.

Every asset of the graph is ``stage_asset(...)``: the key, the corpus partitions, the upstream assets it reads
(real inputs, loaded by the storage IO manager as artifact handles, so the lineage Dagster shows is the one the
code follows), the ``gpu`` pool for GPU stages, the code version, the Launchpad run config. The asset body is
always the same: build the stage's typed inputs and config, run it (``compute.run_stage``), hand back the output
artifact, with the metadata and check results the asset's own ``describe`` function makes of the result. What is
specific to an asset is only that ``describe`` (what a person wants to see) and, where resources feed the stage,
an ``inputs`` hook. See docs/architecture.md ("Add a stage").
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import BaseModel

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.defs.compute import GPU_POOL, run_stage
from embed_pipeline.defs.config import to_stage
from embed_pipeline.defs.metadata import path_value
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.stages.registry import get_stage


@dataclass
class StepContext:
    """What an asset's hooks see: the step, its corpus, its resources, the upstream handles and its own."""

    context: dg.AssetExecutionContext
    corpus: str
    resources: Any
    upstream: dict[str, Artifact]
    out: Artifact
    run_config: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Described:
    """An asset's view of its stage's result: metadata, and the results of its checks."""

    metadata: Mapping[str, Any]
    checks: list[dg.AssetCheckResult] = field(default_factory=list)


STAGE_TAG = "embed_pipeline/stage"  # on each asset's op: the stage that computes it

InputsHook = Callable[[StepContext], Mapping[str, Any]]
ConfigHook = Callable[[StepContext], BaseModel]
DescribeHook = Callable[[StepContext, Any], Described]


def stage_asset(
    stage_name: str,
    *,
    key: str,
    ins: tuple[str, ...] = (),
    group: str,
    kinds: set[str],
    code_version: str,
    describe: DescribeHook,
    run_config: type[dg.Config] | None = None,
    config: ConfigHook | None = None,
    inputs: InputsHook | None = None,
    resources: frozenset[str] = frozenset(),
    check_specs: tuple[dg.AssetCheckSpec, ...] = (),
    output_required: bool = True,
    description: str | None = None,
) -> dg.AssetsDefinition:
    """The asset ``key`` computed by the stage ``stage_name`` (``stages/registry.py``).

    ``ins``: upstream asset keys; each is also the name of a field of the stage's inputs. ``inputs``: the other
    fields of the stage's inputs (e.g. the base encoder's config from a resource). ``config``: the stage's config
    from the run config (default: the run config validated by the stage's config model). ``resources``: the
    resource keys the hooks use (``storage`` always; ``compute`` for GPU stages)."""
    stage = get_stage(stage_name)
    needed = {"storage", *resources} | ({"compute"} if stage.gpu else set())

    def body(context: dg.AssetExecutionContext, run_cfg: Any, upstream: dict[str, Artifact]) -> Any:
        start = time.perf_counter()
        corpus = context.partition_key
        storage = context.resources.storage
        step = StepContext(context, corpus, context.resources, upstream, storage.artifact(key, corpus), run_cfg)
        extra = dict(inputs(step)) if inputs else {}
        if "embedding_cache" in stage.inputs.model_fields:  # every stage that encodes with a fixed model reuses
            extra.setdefault("embedding_cache", storage.embedding_cache_path(corpus))
        stage_inputs = stage.inputs(**upstream, out=step.out, **extra)
        if config is not None:
            stage_config = config(step)
        elif run_cfg is not None:
            stage_config = to_stage(run_cfg, stage.config)
        else:
            stage_config = stage.config()
        compute = context.resources.compute if stage.gpu else None
        result = run_stage(context, compute, stage, stage_inputs, stage_config)
        if (why := stage.skip_reason(result)) is not None:  # e.g. no TensorRT here: the run still succeeds
            context.log.warning(f"{key} not materialized: {why}.")
            return None
        described = describe(step, result)
        metadata = {"path": path_value(step.out.dir), "seconds": round(time.perf_counter() - start, 3)}
        return dg.MaterializeResult(
            value=step.out, metadata={**metadata, **described.metadata}, check_results=described.checks
        )

    decorator = dg.asset(
        name=key,
        ins={name: dg.AssetIn(name) for name in ins},
        partitions_def=corpus_partitions,
        code_version=code_version,
        group_name=group,
        kinds=kinds,
        check_specs=list(check_specs) or None,
        pool=GPU_POOL if stage.gpu else None,
        io_manager_key="storage",
        required_resource_keys=needed,
        output_required=output_required,
        description=description,
        op_tags={STAGE_TAG: stage.name},
    )
    if run_config is not None:

        def with_config(context: dg.AssetExecutionContext, config: run_config, **upstream: Artifact):  # type: ignore[valid-type]
            # A generator, so that an optional output can be left out (nothing yielded) rather than be None.
            if (materialized := body(context, config, upstream)) is not None:
                yield materialized

        return decorator(with_config)

    def without_config(context: dg.AssetExecutionContext, **upstream: Artifact):
        if (materialized := body(context, None, upstream)) is not None:
            yield materialized

    return decorator(without_config)
