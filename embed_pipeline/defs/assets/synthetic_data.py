"""`qa_pairs`: synthetic queries for every chunk, from the generator the run config (or EMBED_SDG_GENERATOR) names.

The run config has one section per config a registered generator reads (``stages/sdg/generators/registry.py``),
so a new generator needs no change here.
"""

from collections import Counter

import dagster as dg
from pydantic import Field, create_model

from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import counts_table, sample_table
from embed_pipeline.defs.stage_asset import Described, StepContext, stage_asset
from embed_pipeline.stages.sdg.generators.registry import all_generators
from embed_pipeline.stages.sdg.stage import QAPairsConfig, QAPairsOutput

_settings = get_settings()


def _sections() -> dict[str, tuple[type[dg.Config], str]]:
    """Run-config section name -> (its dagster Config, its description), over every registered generator."""
    out: dict[str, tuple[type[dg.Config], str]] = {}
    for generator in all_generators():
        defaults = generator.section_defaults(_settings)
        for name, section in generator.sections.items():
            # Secrets (the API key) are never run config: run config is stored with the run.
            run_config = run_config_for(
                section.model, section.config_name, exclude=generator.secrets.get(name, frozenset()),
                **defaults.get(name, {}),
            )  # fmt: skip
            out[name] = (run_config, section.description)
    return out


def _choices(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


SECTIONS = _sections()
QAPairsRunConfig = create_model(
    "QAPairsRunConfig",
    __base__=dg.Config,
    generator=(
        str,
        Field(
            _settings.sdg_generator,
            description=_choices([f"'{g.name}' ({g.description})" for g in all_generators()])
            + ". Default from EMBED_SDG_GENERATOR.",
        ),
    ),
    **{name: (cfg, Field(default_factory=cfg, description=text)) for name, (cfg, text) in SECTIONS.items()},
)


def _stage_config(step: StepContext) -> QAPairsConfig:
    run_config = step.run_config
    sections = {name: getattr(run_config, name).model_dump() for name in SECTIONS}
    return QAPairsConfig(generator=run_config.generator, sections=sections)


def _histogram(scores: list[float]) -> dg.MetadataValue:
    bins = Counter(min(int(s), 9) for s in scores)
    return counts_table({f"{b}-{b + 1}": bins[b] for b in range(10) if bins[b]}, "quality score")


def _describe(step: StepContext, done: QAPairsOutput) -> Described:
    generated = done.generated
    pairs = generated.pairs
    scores = [p.quality_score for p in pairs]
    details: dict = dict(generated.facts)
    details |= {
        name: counts_table(counts, generated.table_keys.get(name, "reason"))
        for name, counts in generated.tables.items()
    }
    details |= {name: dg.MetadataValue.md("\n".join(f"- {n}" for n in lines) or "none") for name, lines in
                generated.notes.items()}  # fmt: skip
    return Described(
        {
            "num_pairs": len(pairs),
            "num_chunks": done.num_chunks,
            "generator": step.run_config.generator,
            "query_counts": counts_table(dict(Counter(p.query_type for p in pairs)), "query_type"),
            "reasoning_counts": counts_table(
                dict(Counter(p.reasoning_type or "none" for p in pairs)), "reasoning_type"
            ),
            "quality_histogram": _histogram(scores),
            "mean_quality": round(sum(scores) / len(scores), 3) if scores else 0.0,
            **details,
            "sample": sample_table(
                [p.model_dump() for p in pairs[:: max(1, len(pairs) // 8)]],
                ["query_type", "quality_score", "query", "positive_chunk_ids"],
                8,
            ),
            "manifest": dg.MetadataValue.json(done.manifest),
            "seconds": round(done.seconds, 3),
        }
    )


qa_pairs = stage_asset(
    "qa_pairs",
    key="qa_pairs",
    ins=("chunks",),
    group="data",
    kinds={"python"},
    code_version="2",
    run_config=QAPairsRunConfig,
    config=_stage_config,
    inputs=lambda step: {"encoder": step.resources.base_encoder.config()},
    resources=frozenset({"base_encoder"}),
    describe=_describe,
    description="Synthetic queries with their positive chunk ids, query/reasoning type, quality score and generator.",
)
