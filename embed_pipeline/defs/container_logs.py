"""Reading a GPU step's container log: pipes messages to Dagster, the rest to stdout, the last lines kept.

dagster-docker's ``PipesDockerLogsMessageReader`` parses each chunk of the container's log stream as one line. But
Docker's log stream is chunks, not lines: the json-file driver splits lines longer than 16 KiB, and a chunk may
hold several lines. A pipes message cut in two would not parse, and what it carried (a stage's result) would be
lost; so this reader puts the lines back together first. It also keeps the last lines that were not pipes messages
(a traceback, CUDA errors) for the error of a failed container.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster_docker.pipes import PipesDockerLogsMessageReader
from dagster_pipes import PIPES_PROTOCOL_VERSION_FIELD, PipesParams

TAIL_LINES = 40


class ContainerLogReader(PipesDockerLogsMessageReader):
    """dagster-docker's container-log message reader, on whole lines, keeping the last ones in ``tail``.

    Lines that are not pipes messages go to this process's stdout (the step's compute log), as dagster-docker's do.
    """

    def __init__(self, tail_lines: int = TAIL_LINES) -> None:
        super().__init__()
        self.container: Any = None
        self.tail: deque[str] = deque(maxlen=tail_lines)
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
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=True):
            pending += decoder.decode(chunk) if isinstance(chunk, bytes) else str(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                self._line(line)
        pending += decoder.decode(b"", final=True)
        if pending:
            self._line(pending)

    def _line(self, line: str) -> None:
        line = line.rstrip("\r")
        message = _pipes_message(line)
        if message is not None and self._pipes_handler is not None:
            try:
                self._pipes_handler.handle_message(message)
                return
            except Exception:  # as dagster-docker does: a message it cannot handle is shown as text
                pass
        sys.stdout.write(line + "\n")
        self.tail.append(line)

    def exit_code(self) -> int | None:
        """The container's exit code, once it has stopped (None: no container, or Docker would not say)."""
        if self.container is None:
            return None
        try:
            return int(self.container.wait(timeout=30)["StatusCode"])
        except Exception:
            return None


def _pipes_message(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and PIPES_PROTOCOL_VERSION_FIELD in message else None
