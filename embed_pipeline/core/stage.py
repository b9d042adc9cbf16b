"""A stage as one typed unit: its inputs, its config, its result and one ``run``.

``run(inputs, config, log) -> result`` is the only way a stage is run: by the Dagster asset in this process, by the
container entry point inside an NVIDIA image (``stages/container_entry.py``), or by hand. ``inputs`` holds the
upstream artifact handles, the output handle and the values that come from the pipeline's resources (the base
encoder, an opt-in); ``config`` is the stage's own settings (what the Launchpad shows). All three are pydantic
models, so they cross a container boundary as JSON and are validated again on the other side.
See docs/architecture.md ("Stages").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

I = TypeVar("I", bound=BaseModel)  # noqa: E741 - the conventional letters: inputs, config, result
C = TypeVar("C", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class NoConfig(BaseModel):
    """The config of a stage that has no settings."""


@dataclass(frozen=True)
class Stage(Generic[I, C, R]):
    """``name``: the registry key (``stages/registry.py``) and the asset it computes. ``gpu``: it runs where the
    compute resource says (in process, or in a container); the others always run in the orchestrating process.
    ``skipped``: for a stage that may decline to run on this machine (TensorRT without a GPU), the result's
    field that then holds why; in a GPU container that asked for the machine, a skip is an error."""

    name: str
    inputs: type[I]
    config: type[C]
    result: type[R]
    run: Callable[[I, C, logging.Logger], R]
    gpu: bool = False
    skipped: str | None = None

    def skip_reason(self, result: R) -> str | None:
        return getattr(result, self.skipped) if self.skipped else None

    def __call__(self, inputs: I, config: C, log: logging.Logger) -> R:
        """Run the stage here, with its inputs and config checked to be of its types."""
        if not isinstance(inputs, self.inputs) or not isinstance(config, self.config):
            raise TypeError(
                f"Stage {self.name!r} takes ({self.inputs.__name__}, {self.config.__name__}); got "
                f"({type(inputs).__name__}, {type(config).__name__})."
            )
        result = self.run(inputs, config, log)
        if not isinstance(result, self.result):
            raise TypeError(f"Stage {self.name!r} returned {type(result).__name__}, not {self.result.__name__}.")
        return result

    def run_json(self, payload: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
        """The stage from JSON (``{"inputs": ..., "config": ...}``) to JSON: what crosses a container boundary."""
        inputs = self.inputs.model_validate(payload.get("inputs", {}))
        config = self.config.model_validate(payload.get("config", {}))
        result = self(inputs, config, log).model_dump(mode="json")
        try:
            json.dumps(result, allow_nan=True)
        except (TypeError, ValueError) as exc:  # a stage bug: say which, rather than failing deep in a pipes writer
            raise TypeError(f"Stage {self.name!r} returned a result that is not JSON: {exc}") from exc
        return result

    def payload(self, inputs: I, config: C) -> dict[str, Any]:
        """What :meth:`run_json` takes: the inputs and config as JSON."""
        return {"inputs": inputs.model_dump(mode="json"), "config": config.model_dump(mode="json")}
