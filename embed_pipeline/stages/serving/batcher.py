"""Dynamic batching: concurrent requests share forward passes, run in one inference thread.

A model is far more efficient on a batch of 32 texts than on 32 batches of one, but each HTTP request carries only
what one caller had. Requests therefore go into a queue; one worker takes the first, waits at most
``max_wait_s`` for more to arrive (never once the batch is full), then sorts all their texts by length and cuts
them into forward passes of at most ``max_batch_texts`` texts and ``max_batch_tokens`` padded tokens, so short
texts are not padded to a long one. Passes run in a dedicated thread, so the event loop keeps accepting,
validating and tokenizing requests meanwhile, and the backend is only ever called from that one thread (PyTorch
and some execution providers are not safe to call concurrently). Each caller gets its own rows back, in its own
order; a pass that fails fails only the requests that had rows in it.

With ``enabled=False`` every request is its own batch, served one at a time: the naive server the benchmark
compares against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from embed_pipeline.core.encoder import token_budget_batches

_log = logging.getLogger("embed_pipeline.serving")


class QueueFull(RuntimeError):
    """More requests are waiting than the service accepts; the client should retry shortly."""


class BatcherStopped(RuntimeError):
    """The service is shutting down; the request was not processed."""


@dataclass
class _Job:
    seqs: list[list[int]]
    future: asyncio.Future
    out: np.ndarray | None = None
    remaining: int = 0
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(s) for s in self.seqs)
        self.remaining = len(self.seqs)


@dataclass
class BatcherStats:
    """Counters for tests and benchmarks: how many passes ran and how full they were."""

    requests: int = 0
    texts: int = 0
    passes: int = 0
    rounds: int = 0
    largest_pass: int = 0


class DynamicBatcher:
    """Queue requests (lists of token-id sequences) and answer each with its float32 embeddings ``[n, dim]``."""

    def __init__(
        self,
        embed: Callable[[list[list[int]]], np.ndarray],
        dimension: int,
        *,
        max_batch_texts: int = 64,
        max_batch_tokens: int = 8192,
        max_wait_s: float = 0.002,
        enabled: bool = True,
        max_queued_requests: int = 1024,
    ) -> None:
        self._embed = embed
        self.dimension = dimension
        self.max_batch_texts, self.max_batch_tokens = max_batch_texts, max_batch_tokens
        self.max_wait_s, self.enabled, self.max_queued_requests = max_wait_s, enabled, max_queued_requests
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the worker on the running loop (call from the app's startup)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-inference")
        self._worker = asyncio.create_task(self._run(), name="embed-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with :class:`BatcherStopped`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(BatcherStopped("the service is shutting down; retry on another instance"))
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def embed(self, seqs: list[list[int]]) -> np.ndarray:
        """Embeddings of ``seqs`` (token ids incl. prefix and special tokens), float32 ``[len(seqs), dim]``."""
        if self._queue is None or self._worker is None or self._worker.done():
            raise BatcherStopped("the batcher is not running; the service is starting or shutting down")
        if not seqs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._queue.qsize() >= self.max_queued_requests:
            raise QueueFull(f"{self._queue.qsize()} requests are already waiting for the model; retry shortly")
        job = _Job(seqs, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    # ------------------------------------------------------------------------------------------------ worker

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            if self.enabled:
                await self._fill(jobs)
            try:
                await self._process(jobs)
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(BatcherStopped("the service is shutting down"))
                raise
            except Exception as exc:  # a bug here must not kill the worker and hang every later request
                _log.exception("batcher round failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    async def _fill(self, jobs: list[_Job]) -> None:
        """Add queued jobs to ``jobs`` until full, waiting at most ``max_wait_s`` after the first."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        texts, tokens = len(jobs[0].seqs), jobs[0].tokens
        while texts < self.max_batch_texts and tokens < self.max_batch_tokens:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    return
            jobs.append(job)
            texts, tokens = texts + len(job.seqs), tokens + job.tokens

    async def _process(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # callers that hung up are skipped
        rows = [(j, r) for j, job in enumerate(jobs) for r in range(len(job.seqs))]
        if not rows:
            return
        lengths = [len(jobs[j].seqs[r]) for j, r in rows]
        order = np.argsort([-n for n in lengths], kind="stable")
        passes = token_budget_batches(order, lengths, self.max_batch_texts, self.max_batch_tokens)
        self.stats.rounds += 1
        self.stats.requests += len(jobs)
        loop = asyncio.get_running_loop()
        for members in passes:
            owners = {rows[i][0] for i in members}
            if all(jobs[j].future.done() for j in owners):
                continue  # every caller of this pass failed earlier or hung up
            batch = [jobs[rows[i][0]].seqs[rows[i][1]] for i in members]
            try:
                emb = await loop.run_in_executor(self._executor, self._embed, batch)
                emb = np.asarray(emb, dtype=np.float32)
                if emb.shape != (len(batch), self.dimension):
                    raise RuntimeError(
                        f"backend returned shape {emb.shape} for {len(batch)} inputs; expected "
                        f"({len(batch)}, {self.dimension})"
                    )
            except Exception as exc:
                _log.exception(f"inference failed for a pass of {len(batch)} inputs from {len(owners)} request(s)")
                for j in owners:
                    if not jobs[j].future.done():
                        jobs[j].future.set_exception(exc)
                continue
            self.stats.passes += 1
            self.stats.texts += len(batch)
            self.stats.largest_pass = max(self.stats.largest_pass, len(batch))
            for k, i in enumerate(members):
                j, r = rows[i]
                job = jobs[j]
                if job.future.done():
                    continue
                if job.out is None:
                    job.out = np.empty((len(job.seqs), self.dimension), dtype=np.float32)
                job.out[r] = emb[k]
                job.remaining -= 1
                if job.remaining == 0:  # answer as soon as a caller's last row is in, not at the end of the round
                    job.future.set_result(job.out)
