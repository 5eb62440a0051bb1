"""Bounded concurrency for heavy request work outside the model batchers (decoding a CT upload can
hold gigabytes while it is read and resampled): at most ``slots`` at once, ``queue`` more waiting,
and beyond that a 503 with Retry-After instead of more memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from core.serving.errors import ApiError


class WorkGate:
    def __init__(self, name: str, slots: int, queue: int, retry_after_s: int = 5) -> None:
        if slots < 1 or queue < 0:
            raise ValueError("a work gate needs slots >= 1 and queue >= 0")
        self.name, self.slots, self.queue, self.retry_after_s = name, slots, queue, retry_after_s
        self._free = slots
        self._waiting = 0
        self._condition: asyncio.Condition | None = None  # made in the serving loop, on first use

    @property
    def busy(self) -> int:
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the ``async with`` body; 503 when every slot is taken and the queue is full."""
        if self._condition is None:
            self._condition = asyncio.Condition()
        if self._free == 0 and self._waiting >= self.queue:
            raise ApiError(503, "busy", f"{self.busy} {self.name} in progress and {self._waiting} waiting; "
                           f"retry in {self.retry_after_s} s", {"retry_after_s": self.retry_after_s},
                           headers={"Retry-After": str(self.retry_after_s)})
        async with self._condition:
            self._waiting += 1
            try:
                await self._condition.wait_for(lambda: self._free > 0)
            finally:
                self._waiting -= 1
            self._free -= 1
        try:
            yield
        finally:
            async with self._condition:
                self._free += 1
                self._condition.notify()
