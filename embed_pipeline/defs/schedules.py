"""``nightly_refresh``: one run of ``embed_pipeline_job`` per registered corpus, every night.

For deployments that want every corpus rebuilt on a fixed rhythm (e.g. after a base-model or config change, or
when corpora are edited in place on storage the sensor does not watch). The cron expression is
``EMBED_REFRESH_CRON`` (default ``0 2 * * *``, 02:00) in ``EMBED_REFRESH_TIMEZONE`` (default UTC), read when the
code location loads.

A registered corpus whose folder is missing is skipped and logged: its run could only fail. The run key is
``<corpus>:<scheduled date>``, so a tick retried by the daemon never launches a corpus twice that night.

STOPPED by default, like ``corpus_sensor``: a nightly fine-tune of every corpus costs real compute. Turn it on in
the UI (Automation) or with ``dagster schedule start nightly_refresh -m embed_pipeline``.
"""

from __future__ import annotations

import os

import dagster as dg

from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.jobs import embed_job
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.sensors import TRIGGER_TAG

REFRESH_CRON = os.environ.get("EMBED_REFRESH_CRON", "0 2 * * *")
REFRESH_TIMEZONE = os.environ.get("EMBED_REFRESH_TIMEZONE", "UTC")
SCHEDULED_DATE_TAG = "embed_pipeline/scheduled_date"


@dg.schedule(
    job=embed_job,
    cron_schedule=REFRESH_CRON,
    execution_timezone=REFRESH_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=f"Refreshes every registered corpus ({REFRESH_CRON}, {REFRESH_TIMEZONE}; EMBED_REFRESH_CRON). "
    "Stopped by default: each run fine-tunes a model.",
)
def nightly_refresh(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    corpora_dir = get_settings().corpora_dir.expanduser().resolve()
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    requests = []
    for corpus in sorted(context.instance.get_dynamic_partitions(corpus_partitions.name)):
        if not (corpora_dir / corpus).is_dir():
            context.log.warning(f"nightly_refresh: corpus {corpus!r} has no folder under {corpora_dir}; skipped")
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"{corpus}:{day}",
                partition_key=corpus,
                tags={TRIGGER_TAG: "nightly_refresh", SCHEDULED_DATE_TAG: day},
            )
        )
    if not requests:
        return dg.SkipReason(f"no registered corpus with a folder under {corpora_dir} (embed-pipeline corpus add)")
    return requests


SCHEDULES = [nightly_refresh]
