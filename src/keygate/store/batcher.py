"""Group commits: requests that arrive while one batch is in flight are decided together.

``Batcher(decide)`` queues each ``submit(item)``; when no batch is in flight it starts one with
everything queued, and ``decide(items)`` returns one result per item, in order (one database
transaction, or one Redis round trip, for the whole batch). Each caller is answered only when its
batch's ``decide`` has returned, that is after the batch is committed: a reply never precedes the
durability of its claim.

Bound: at most ``max_batch`` items per batch (default ``MAX_BATCH``); an item waits at most for the
batch in flight when it arrived plus its own (no timer: an idle process decides a lone item at
once). The queue is bounded by the requests in flight (each waits for its own answer). If ``decide``
raises (an outage), every caller of that batch gets the same exception, so all of them fail closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

MAX_BATCH = 256
_GATHER_PASSES = 4  # at most this many passes of the event loop before a batch is decided


class Batcher(Generic[I, R]):
    def __init__(self, decide: Callable[[list[I]], Awaitable[list[R]]], max_batch: int = MAX_BATCH) -> None:
        self._decide = decide
        self._max = max_batch
        self._items: list[I] = []
        self._futures: list[asyncio.Future[R]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # batches decided (for tests and metrics)

    async def submit(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and task.get_loop() is not loop:  # a new event loop (tests): start afresh
            self._items, self._futures, task = [], [], None
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if task is None or task.done():
            self._task = loop.create_task(self._run(), name="keygate-batcher")
        return await future

    async def _run(self) -> None:
        while self._items:
            # Let the requests that are already under way join: the loop runs every ready task once
            # per pass, so wait passes while the queue still grows (a lone claim waits one pass).
            for _ in range(_GATHER_PASSES):
                queued = len(self._items)
                await asyncio.sleep(0)
                if len(self._items) == queued or len(self._items) >= self._max:
                    break
            items, futures = self._items[: self._max], self._futures[: self._max]
            del self._items[: self._max], self._futures[: self._max]
            try:
                results = await self._decide(items)
            except Exception as exc:
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
                continue
            except BaseException:  # cancelled (shutdown): nobody is told "accepted"
                for f in futures + self._futures:
                    if not f.done():
                        f.cancel()
                self._items, self._futures = [], []
                raise
            self.batches += 1
            for f, r in zip(futures, results, strict=True):
                if not f.done():
                    f.set_result(r)
