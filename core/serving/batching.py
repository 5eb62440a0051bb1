"""Dynamic batching in front of a model runner.

Requests queue; a batch is cut when it reaches ``max_batch`` or when its oldest request has waited
``max_delay_ms``; the runner's ``predict_batch`` runs in a worker thread so the event loop keeps
accepting; each result goes back to its own caller; a failing item fails only its own request; a
full queue answers 503 with Retry-After; each request has a timeout.

The runner knows nothing about FastAPI or asyncio, so the same object can later sit inside a Ray
Serve deployment (whose ``@serve.batch`` plays this class's part).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from core.serving.errors import ApiError

log = logging.getLogger("triptych.serving.batching")


@runtime_checkable
class ModelRunner(Protocol):
    """What the batcher needs from a model. ``predict_batch`` is synchronous (it runs in a worker
    thread) and returns one entry per item, in order; an item that fails gets an Exception
    instance in its slot instead of a result."""

    name: str
    version: str
    sha256: str

    def predict_batch(self, items: list[Any]) -> list[Any]: ...


@dataclass
class BatcherStats:
    submitted: int = 0
    completed: int = 0  # items that got a result
    failed: int = 0  # items that got an exception from the runner
    rejected: int = 0  # refused because the queue was full
    timed_out: int = 0
    batches: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)

    @property
    def mean_batch_size(self) -> float:
        return (sum(k * v for k, v in self.batch_sizes.items()) / self.batches) if self.batches else 0.0


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float
    timeout_s: float


class DynamicBatcher:
    """Queue + batch cutter + one worker thread per runner.

    ``observer`` (optional) is called from the event loop as ``observer(event, **values)`` with
    events ``batch`` (size, seconds), ``queue`` (depth), ``item`` (outcome); metrics hook in here.
    """

    def __init__(
        self,
        runner: ModelRunner,
        max_batch: int = 32,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        timeout_s: float = 30.0,
        observer: Callable[..., None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.runner = runner
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.observer = observer
        self.stats = BatcherStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_seconds = 0.05  # running estimate, used for Retry-After
        self._batch_started: float | None = None  # perf_counter when the running batch began
        self._batch_timeout_s = timeout_s  # the longest timeout among the running batch's items
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        # first use, or a new event loop (tests create one per test): start a fresh worker
        self._loop = loop
        self._wakeup = asyncio.Event()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{self.runner.name}")
        self._task = loop.create_task(self._worker(), name=f"batcher-{self.runner.name}")

    async def start(self) -> None:
        self._closed = False
        self._ensure_started()

    async def stop(self) -> None:
        """Stop the worker; queued requests get 503."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down; retry shortly"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- submission --------------------------------------------------------------------------
    @property
    def busy_s(self) -> float:
        """How long the batch now inside the runner has been running (0 when idle)."""
        started = self._batch_started
        return 0.0 if started is None else time.perf_counter() - started

    @property
    def stalled(self) -> bool:
        """True when one model call has outlasted the longest timeout of the items in it: every
        caller is timing out."""
        return self.busy_s > self._batch_timeout_s

    def retry_after_s(self) -> int:
        # time to drain the queue at the current batch speed, at least one second
        batches = math.ceil(len(self._queue) / self.max_batch)
        return max(1, math.ceil(batches * self._batch_seconds))

    async def submit(self, item: Any, timeout_s: float | None = None) -> Any:
        """Queue one item and wait for its own result (or its own exception).

        ``timeout_s``: this item's wait limit instead of the batcher's, for work whose size is
        known up front (a long recording takes longer than a short one)."""
        if self._closed:
            raise ApiError(503, "shutting_down", "the service is shutting down; retry shortly")
        self._ensure_started()
        if len(self._queue) >= self.max_queue:
            self.stats.rejected += 1
            self._emit("item", outcome="rejected")
            retry = self.retry_after_s()
            raise ApiError(
                503,
                "overloaded",
                f"model {self.runner.name!r} has {len(self._queue)} requests queued; retry in {retry} s",
                {"queue_depth": len(self._queue), "retry_after_s": retry},
                headers={"Retry-After": str(retry)},
            )
        future = asyncio.get_running_loop().create_future()
        timeout_s = self.timeout_s if timeout_s is None else float(timeout_s)
        self._queue.append(_Pending(item, future, time.perf_counter(), timeout_s))
        self.stats.submitted += 1
        self._emit("queue", depth=len(self._queue))
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            # shield: a timeout abandons the wait, not the batch other callers share
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            future.cancel()  # the worker skips it if it has not started yet
            self.stats.timed_out += 1
            self._emit("item", outcome="timeout")
            raise ApiError(
                504, "timeout", f"model {self.runner.name!r} did not answer within {timeout_s:g} s; retry later"
            ) from None

    # -- worker ------------------------------------------------------------------------------
    def _emit(self, event: str, **values: Any) -> None:
        if self.observer is not None:
            try:
                self.observer(event, **values)
            except Exception:  # metrics must never break serving
                log.exception("batcher observer failed")

    async def _next_batch(self) -> list[_Pending]:
        assert self._wakeup is not None
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0].enqueued + self.max_delay_s
        while len(self._queue) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch:
            pending = self._queue.popleft()
            if not pending.future.done():  # skip callers that timed out while queued
                batch.append(pending)
        self._emit("queue", depth=len(self._queue))
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            items = [p.item for p in batch]
            started = time.perf_counter()
            self._batch_timeout_s = max(p.timeout_s for p in batch)
            self._batch_started = started
            try:
                results = await loop.run_in_executor(self._executor, self._run_isolated, items)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down"))
                raise
            except Exception as exc:  # the executor itself failed: every item in it fails
                results = [exc] * len(items)
            finally:
                self._batch_started = None
            seconds = time.perf_counter() - started
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
            self.stats.batches += 1
            self.stats.batch_sizes[len(batch)] += 1
            self._emit("batch", size=len(batch), seconds=seconds)
            for pending, result in zip(batch, results):
                failed = isinstance(result, BaseException)
                if failed:
                    self.stats.failed += 1
                else:
                    self.stats.completed += 1
                self._emit("item", outcome="error" if failed else "ok")
                if pending.future.done():
                    continue
                if failed:
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    def _run_isolated(self, items: list[Any]) -> list[Any]:
        """Run a batch; if the whole call raises, rerun item by item so only the culprit fails."""
        try:
            results = list(self.runner.predict_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"runner {self.runner.name!r} returned {len(results)} results for {len(items)} items")
            return results
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            log.warning("batch of %d failed (%s); retrying items one by one", len(items), type(exc).__name__)
            out: list[Any] = []
            for item in items:
                try:
                    single = list(self.runner.predict_batch([item]))
                    out.append(single[0] if len(single) == 1 else RuntimeError("runner returned a wrong count"))
                except Exception as item_exc:
                    out.append(item_exc)
            return out
