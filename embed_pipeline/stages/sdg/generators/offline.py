"""The LLM-free generator (inverse cloze + salient-term keyword queries): ``stages/sdg/offline.py``."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from embed_pipeline.stages.sdg.generators.base import Generated, Generator, GeneratorInputs, Section
from embed_pipeline.stages.sdg.offline import OfflineGeneratorConfig, generate_offline


def _generate(inputs: GeneratorInputs, sections: dict[str, BaseModel], log: logging.Logger) -> Generated:
    return Generated(pairs=generate_offline(inputs.chunks, sections["offline"], logger=log))


GENERATOR = Generator(
    name="offline",
    description="LLM-free: inverse cloze + salient-term keyword queries",
    sections={"offline": Section(OfflineGeneratorConfig, "LLM-free generator settings.", "OfflineRunConfig")},
    generate=_generate,
)
