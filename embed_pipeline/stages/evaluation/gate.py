"""The statistical quality gate: does the fine-tuned model beat, match or lose to the base?

It reads the 95% interval of the nDCG@10 change (fine-tuned minus base) on the synthetic test queries and, when
the user gave them, on the real queries:

- ``block``: some interval lies wholly below 0 (a significant regression): the model must not be deployed;
- ``warn``: no interval excludes 0 on the down side, but one holds 0: the change is within the noise of these
  queries, so no gain is claimed (the run goes on);
- ``pass``: every interval lies above 0: a measured gain.

A point value compared with the base (the old gate) fires or passes on noise: on 68 queries one query moves nDCG@10
by about 0.015.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from embed_pipeline.stages.evaluation.bootstrap import DeltaInterval

Outcome = Literal["pass", "warn", "block"]


class GateDecision(BaseModel):
    outcome: Outcome
    description: str


def quality_gate(intervals: dict[str, DeltaInterval], label: str = "nDCG@10") -> GateDecision:
    """The gate over named intervals (e.g. {"synthetic test queries": ..., "real queries": ...})."""
    if not intervals:
        raise ValueError("quality_gate: no interval to judge.")
    lines = [f"{name}: {ci.describe(label)}" for name, ci in intervals.items()]
    losses = [name for name, ci in intervals.items() if ci.verdict == "loss"]
    unsure = [name for name, ci in intervals.items() if ci.verdict == "no significant change"]
    if losses:
        head = (
            f"BLOCKED: the fine-tuned model is significantly worse than the base on the {' and '.join(losses)} "
            "(the interval of the change lies below 0). It is not deployed; see the metrics table and the slices."
        )
        return GateDecision(outcome="block", description=head + "\n" + "\n".join(lines))
    if unsure:
        head = (
            f"WARNING: no significant change on the {' and '.join(unsure)} (the interval of the change holds 0): "
            "the gain is within the noise of these queries, so none is claimed. More test queries narrow it."
        )
        return GateDecision(outcome="warn", description=head + "\n" + "\n".join(lines))
    return GateDecision(outcome="pass", description="PASSED: a significant gain.\n" + "\n".join(lines))
