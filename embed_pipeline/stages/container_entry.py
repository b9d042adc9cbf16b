"""Entry point of a GPU step in a container: ``python -m embed_pipeline.stages.container_entry``.

Launched by Dagster (``defs/compute.py``, compute mode ``docker``) through Dagster Pipes: the stage name and its
typed inputs and config as JSON arrive as the pipes extras ``stage`` and ``payload`` (``{"inputs": ...,
"config": ...}``); the stage (``stages/registry.py``) validates them into its own pydantic types and runs the same
``run`` the in-process mode calls. Python logging (the stage's progress) goes back to the Dagster run log; the
stage's result, as JSON, goes back as the ``result`` metadata (type json) of the asset materialization this
process reports, and the asset validates it into the stage's result type again.

By hand, without Dagster (to debug a step in the image, or rerun one):

    python -m embed_pipeline.stages.container_entry STAGE --params payload.json [--out result.json]

runs the same stage and prints its JSON result (or writes it to ``--out``). An exception exits non-zero with the
traceback on stderr; under Dagster the traceback is also reported through pipes.

This module imports ``dagster_pipes`` (the small protocol package), never ``dagster``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

from embed_pipeline.stages.registry import STAGES, get_stage

__all__ = ["RESULT_METADATA_KEY", "main", "run_payload"]

RESULT_METADATA_KEY = "result"
LOGGER_NAME = "embed_pipeline"  # the stages log under this name (or a child of it)


class _ForwardToPipes(logging.Handler):
    """Sends this process's ``embed_pipeline`` log records to the Dagster run log (``pipes.log``)."""

    def __init__(self, pipes_log: logging.Logger) -> None:
        super().__init__(level=logging.INFO)
        self._pipes_log = pipes_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pipes_log.log(record.levelno, record.getMessage())
        except Exception:  # a log line must never fail the stage
            self.handleError(record)


def run_payload(stage: str, payload: dict, log: logging.Logger) -> dict:
    """Run ``stage`` on its JSON ``payload``; its result as JSON (checked to be JSON, as crossing to Dagster needs)."""
    return get_stage(stage).run_json(payload, log)


def _stage_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    return logger


def run_with_pipes() -> int:
    """The Dagster-launched path: extras in, logs and the ``result`` materialization metadata out."""
    with open_dagster_pipes() as pipes:
        stage, payload = pipes.get_extra("stage"), pipes.get_extra("payload")
        logger = _stage_logger()
        logger.addHandler(_ForwardToPipes(pipes.log))
        logger.propagate = False  # the records reach Dagster through pipes; no second copy on stderr
        logger.info(f"container stage {stage!r} starting")
        result = run_payload(stage, payload, logger.getChild("stage"))
        sys.stdout.flush()  # keep stray output from interleaving with the result message in the container log
        pipes.report_asset_materialization(metadata={RESULT_METADATA_KEY: {"raw_value": result, "type": "json"}})
    return 0


def run_by_hand(argv: list[str]) -> int:
    """The manual path: ``STAGE --params params.json [--out result.json]``."""
    parser = argparse.ArgumentParser(
        prog="python -m embed_pipeline.stages.container_entry",
        description="Run one stage of the pipeline (the GPU ones run here in docker mode). Launched by Dagster it "
        "reads its stage and payload from Dagster Pipes; by hand, give them here.",
    )
    parser.add_argument("stage", choices=sorted(STAGES), help="The stage to run.")
    parser.add_argument(
        "--params", type=Path, required=True, help='JSON file with the stage\'s {"inputs": ..., "config": ...}.'
    )
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON result here (default: stdout).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        payload = json.loads(args.params.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read params from {args.params}: {exc}")
    result = run_payload(args.stage, payload, _stage_logger().getChild("stage"))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv and PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return run_with_pipes()
    return run_by_hand(argv)


if __name__ == "__main__":
    raise SystemExit(main())
