"""Reading a GPU step's container or pod log: pipes messages to Dagster, the rest to stdout, the last lines kept.

A log arrives as chunks, not lines, and a pipes message cut in two would not parse: what it carried (a stage's
result) would be lost. So both readers here put the lines back together first (:func:`whole_lines`), whatever the
chunks, also across a UTF-8 character, and keep the last lines that were not pipes messages (a traceback, CUDA
errors) for the error of a failed step.

- docker: dagster-docker's ``PipesDockerLogsMessageReader`` parses each chunk of the container's log stream as one
  line, but Docker's json-file driver splits lines longer than 16 KiB and a chunk may hold several lines.
- k8s: dagster-k8s's ``PipesK8sPodLogsMessageReader`` parses ``<timestamp> <text>`` items out of the pod's log
  (``_process_log_stream``) and relies on getting whole lines: a piece that does not begin with a timestamp is
  taken for the rest of the previous line, so a cut inside a timestamp glues the next line (a message) onto the
  previous one, and lines that share a timestamp are joined into one text that no longer parses as a message. (Its
  single-container path happens to iterate urllib3's response, which yields lines; its multi-container path reads
  raw chunks.) :func:`pod_log_reader` reads the same request (``read_namespaced_pod_log``, ``follow``,
  ``timestamps``) as raw chunks, splits it on newlines itself, strips each line's timestamp, and keeps dagster-k8s's
  reconnects (after a request timeout or an error, the lines already handled are skipped by their timestamps). It
  needs dagster-k8s (the ``k8s`` extra), imported only when called.
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster_docker.pipes import PipesDockerLogsMessageReader
from dagster_pipes import PIPES_PROTOCOL_VERSION_FIELD, PipesParams

TAIL_LINES = 40


def whole_lines(chunks: Iterable[bytes | str]) -> Iterator[str]:
    """The lines of a stream of chunks that may cut lines (and UTF-8 characters) anywhere, without their newline.

    A last line without a newline is yielded at the end of the stream."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts: list[str] = []  # the line so far: joined once, when its newline arrives (no quadratic re-scanning)
    for chunk in chunks:
        text = decoder.decode(chunk) if isinstance(chunk, bytes) else str(chunk)
        if "\n" not in text:
            parts.append(text)
            continue
        first, *rest = text.split("\n")
        yield "".join(parts) + first
        yield from rest[:-1]
        parts = [rest[-1]]
    parts.append(decoder.decode(b"", final=True))
    if last := "".join(parts):
        yield last


class _LineSink:
    """Where a whole line goes: a pipes message to the handler, anything else to stdout and ``tail``."""

    tail: deque[str]

    def _line(self, line: str, handler: dg.PipesMessageHandler | None) -> None:
        line = line.rstrip("\r")
        message = _pipes_message(line)
        if message is not None and handler is not None:
            try:
                handler.handle_message(message)
                return
            except Exception:  # as dagster-docker and dagster-k8s do: a message it cannot handle is shown as text
                pass
        sys.stdout.write(line + "\n")
        self.tail.append(line)


class ContainerLogReader(_LineSink, PipesDockerLogsMessageReader):
    """dagster-docker's container-log message reader, on whole lines, keeping the last ones in ``tail``.

    Lines that are not pipes messages go to this process's stdout (the step's compute log), as dagster-docker's do.
    """

    def __init__(self, tail_lines: int = TAIL_LINES) -> None:
        super().__init__()
        self.container: Any = None
        self.tail = deque(maxlen=tail_lines)
        self._pipes_handler: dg.PipesMessageHandler | None = None

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[PipesParams]:
        self._pipes_handler = handler
        try:
            with super().read_messages(handler) as params:
                yield params
        finally:
            self._pipes_handler = None

    def consume_docker_logs(self, container: Any) -> None:
        self.container = container
        for line in whole_lines(container.logs(stdout=True, stderr=True, stream=True, follow=True)):
            self._line(line, self._pipes_handler)

    def exit_code(self) -> int | None:
        """The container's exit code, once it has stopped (None: no container, or Docker would not say)."""
        if self.container is None:
            return None
        try:
            return int(self.container.wait(timeout=30)["StatusCode"])
        except Exception:
            return None


class _PodLogLines(_LineSink):
    """The pod-log reading of :func:`pod_log_reader` (mixed into dagster-k8s's reader, which it overrides)."""

    _handler: dg.PipesMessageHandler | None  # set by PipesK8sPodLogsMessageReader.read_messages

    def __init__(self, tail_lines: int = TAIL_LINES) -> None:
        super().__init__()
        self.tail = deque(maxlen=tail_lines)
        self.pod_name: str | None = None

    def consume_pod_logs(self, context: Any, core_api: Any, pod_name: str, namespace: str) -> None:
        """Read the pod's log until it ends, as dagster-k8s does (same request, same retries), on whole lines."""
        from urllib3.exceptions import ReadTimeoutError

        handler = getattr(self, "_handler", None)
        if handler is None:
            raise RuntimeError("Pod logs can only be consumed within read_messages.")
        self.pod_name = pod_name
        # The same knobs as dagster-k8s's reader: reconnect every hour (a read that hangs), 5 retries on errors.
        request_timeout = int(os.getenv("DAGSTER_PIPES_K8S_CONSUME_POD_LOGS_REQUEST_TIMEOUT") or 3600) or None
        retries = int(os.getenv("DAGSTER_PIPES_K8S_CONSUME_POD_LOGS_RETRIES", "5"))
        buffer_s = int(os.getenv("DAGSTER_PIPES_K8S_CONSUME_POD_LOGS_BUFFER_SECONDS", "300"))
        seen = _SeenLines()
        while True:
            since = None if seen.last_epoch is None else int(max(time.time() - seen.last_epoch, 0) + buffer_s)
            response = None
            try:
                response = core_api.read_namespaced_pod_log(
                    pod_name,
                    namespace,
                    follow=True,
                    timestamps=True,
                    since_seconds=since,
                    _preload_content=False,  # the raw stream: no JSON parsing of the log
                    _request_timeout=request_timeout,
                )
                # A line cut off by a broken stream is dropped with it: the reconnect reads it again, whole.
                for line in whole_lines(response.stream()):
                    stamp, text = _split_timestamp(line)
                    if seen.repeated(stamp, text):
                        continue
                    self._line(text, handler)
                return
            except Exception as exc:
                if isinstance(exc, ReadTimeoutError) and request_timeout:
                    logging.getLogger("dagster").info("Re-connecting to pod logs stream")
                elif retries == 0:
                    raise
                else:
                    retries -= 1
                    context.log.warning(
                        f"Error consuming the logs of pod {pod_name}; {retries} retries left: {exc}", exc_info=True
                    )
                seen.catching_up = True
            finally:
                if response is not None and hasattr(response, "close"):
                    response.close()


class _SeenLines:
    """The lines handled so far, by timestamp: after a reconnect (``since_seconds`` with a margin) the stream starts
    earlier than where it broke, and lines up to there are skipped once, until the first new one."""

    def __init__(self) -> None:
        self.catching_up = False
        self.last: tuple[str, str] | None = None  # the latest timestamp, as a sortable key
        self.last_epoch: float | None = None
        self.at_last: set[str] = set()  # the lines with that timestamp

    def repeated(self, stamp: str | None, text: str) -> bool:
        key = _timestamp_key(stamp) if stamp else None
        if key is None:
            self.catching_up = False
            return False
        if self.catching_up and self.last is not None:
            if key < self.last or (key == self.last and text in self.at_last):
                return True
            self.catching_up = False
        if self.last is None or key > self.last:
            self.last, self.at_last = key, {text}
            self.last_epoch = _epoch(stamp)
        elif key == self.last:
            self.at_last.add(text)
        return False


def _split_timestamp(line: str) -> tuple[str | None, str]:
    """``2024-03-22T02:17:29.885548486Z text`` -> (the timestamp, the text); a line without one is all text."""
    stamp, sep, text = line.partition(" ")
    if sep and _timestamp_key(stamp) is not None:
        return stamp, text
    return None, line


def _timestamp_key(stamp: str) -> tuple[str, str] | None:
    """An RFC 3339 UTC timestamp (the kubelet's, nanoseconds, trailing zeros trimmed or not) as a sortable key."""
    if not stamp.endswith("Z") or len(stamp) < 20 or stamp[10] != "T":
        return None
    seconds, _, fraction = stamp[:-1].partition(".")
    if len(seconds) != 19 or (fraction and not fraction.isdigit()):
        return None
    try:
        datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return seconds, fraction.ljust(9, "0")


def _epoch(stamp: str) -> float:
    seconds, _, fraction = stamp[:-1].partition(".")
    base = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return base + (float(f"0.{fraction}") if fraction else 0.0)


def pod_log_reader(tail_lines: int = TAIL_LINES) -> Any:
    """dagster-k8s's pod-log message reader on whole lines, keeping the last ones in ``tail`` (needs dagster-k8s)."""
    from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

    return _pod_log_reader_class(PipesK8sPodLogsMessageReader)(tail_lines)


@functools.cache
def _pod_log_reader_class(base: type) -> type:
    # PipesK8sClient reads the pod's log only with an instance of its own reader class: this one subclasses it.
    return type("PodLogReader", (_PodLogLines, base), {"__module__": __name__})


def plain_lines(text: str) -> list[str]:
    """The lines of a log that are not pipes messages (a pod's last lines, read after it failed)."""
    lines = [_split_timestamp(line)[1].rstrip("\r") for line in text.splitlines()]
    return [line for line in lines if _pipes_message(line) is None]


def _pipes_message(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and PIPES_PROTOCOL_VERSION_FIELD in message else None
