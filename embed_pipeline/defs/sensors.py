"""``corpus_sensor``: a new or edited corpus folder under EMBED_CORPORA_DIR starts a run of the pipeline for it.

Each tick fingerprints every corpus folder (``stages.corpus_watch``: the document files' paths and content
hashes) and compares with the fingerprints stored in the cursor, a JSON ``{corpus: fingerprint}``:

- a new folder: its ``corpus`` partition is added (if ``corpus add`` did not already) and a run of
  ``embed_pipeline_job`` is requested for it;
- a changed folder (a document added, removed, renamed or edited): a refresh run is requested;
- unchanged folders: nothing, and the tick is skipped with counts saying so;
- a removed folder: dropped from the cursor and logged; the partition and its artifacts are kept (``embed-pipeline
  corpus remove`` unregisters it).

The run key is ``<corpus>:<fingerprint>``, so one content is never run twice, even if the cursor is reset.
A folder with no document file yet, or changed in the last ``EMBED_SENSOR_SETTLE_SECONDS`` (default 10; a copy
still in progress), is left for a later tick rather than run half-copied.

It is STOPPED by default: each run fine-tunes a model (minutes on CPU per corpus), and turning the sensor on
runs every corpus whose content it has not run yet, which would surprise someone who only opened ``dagster dev``
to look around. Turn it on in the UI (Automation) or with
``dagster sensor start corpus_sensor -m embed_pipeline``; the state is kept in the instance.
"""

from __future__ import annotations

import json
import os
import time

import dagster as dg

from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.jobs import embed_job
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.stages.corpus_watch import HashCache, corpus_folders, scan_corpora

MINIMUM_INTERVAL_SECONDS = 60
DEFAULT_SETTLE_SECONDS = 10.0
TRIGGER_TAG = "embed_pipeline/trigger"
REASON_TAG = "embed_pipeline/reason"
FINGERPRINT_TAG = "embed_pipeline/fingerprint"

# Content hashes of unchanged files, kept between ticks in the code server process (a restart only costs a rehash).
_HASH_CACHE: HashCache = {}


def settle_seconds() -> float:
    """A folder whose newest document changed more recently than this waits for the next tick (read every tick)."""
    return float(os.environ.get("EMBED_SENSOR_SETTLE_SECONDS", DEFAULT_SETTLE_SECONDS))


def read_cursor(cursor: str | None, log) -> dict[str, str]:
    """The ``{corpus: fingerprint}`` of the cursor; an unreadable cursor starts over (run keys prevent reruns)."""
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        log.warning(f"corpus_sensor: ignoring an unreadable cursor {cursor[:200]!r}; every corpus is compared anew")
        return {}
    return value


@dg.sensor(
    job=embed_job,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Watches EMBED_CORPORA_DIR: a new corpus folder is registered as a 'corpus' partition and run; "
    "a folder whose documents changed is run again. Stopped by default: each run fine-tunes a model.",
)
def corpus_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    corpora_dir = get_settings().corpora_dir.expanduser().resolve()
    if not corpora_dir.is_dir():
        return dg.SensorResult(
            skip_reason=f"EMBED_CORPORA_DIR {corpora_dir} does not exist yet: create it and add corpus folders.",
            cursor=context.cursor,
        )
    previous = read_cursor(context.cursor, context.log)
    states = scan_corpora(corpora_dir, _HASH_CACHE)
    ignored = corpus_folders(corpora_dir)[1]
    registered = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    now_ns = time.time_ns()
    settle_ns = settle_seconds() * 1e9

    cursor: dict[str, str] = {}
    run_requests: list[dg.RunRequest] = []
    to_register: list[str] = []
    unchanged, waiting = [], []
    for name, state in states.items():
        settling = now_ns - state.last_change_ns < settle_ns
        if state.num_files == 0 or settling:
            waiting.append(f"{name} ({'no document yet' if state.num_files == 0 else 'changed just now'})")
            if name in previous:  # keep what was last run, so a return to that content is not rerun
                cursor[name] = previous[name]
            continue
        cursor[name] = state.fingerprint
        if previous.get(name) == state.fingerprint:
            unchanged.append(name)
            continue
        reason = "changed" if name in previous else "new"
        if name not in registered:
            to_register.append(name)
        context.log.info(f"corpus {name!r}: {reason} ({state.num_files} document files, {state.fingerprint[:12]})")
        run_requests.append(
            dg.RunRequest(
                run_key=f"{name}:{state.fingerprint}",
                partition_key=name,
                tags={TRIGGER_TAG: "corpus_sensor", REASON_TAG: reason, FINGERPRINT_TAG: state.fingerprint[:16]},
            )
        )
    for name in sorted(set(previous) - set(states)):
        context.log.info(
            f"corpus {name!r}: folder removed from {corpora_dir}; its partition and artifacts are kept "
            f"(`embed-pipeline corpus remove {name}` unregisters it)"
        )
    if ignored:
        context.log.warning(f"corpus_sensor: ignoring folders whose names are not valid corpus names: {ignored}")

    new_cursor = json.dumps(cursor, sort_keys=True)
    if not run_requests:
        parts = [f"{len(unchanged)} corpora unchanged under {corpora_dir}"]
        if waiting:
            parts.append(f"waiting for {', '.join(waiting)}")
        return dg.SensorResult(skip_reason="; ".join(parts), cursor=new_cursor)
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[corpus_partitions.build_add_request(to_register)] if to_register else [],
        cursor=new_cursor,
    )


SENSORS = [corpus_sensor]
