"""When a test or one of its fixtures hangs, say where every asyncio task is waiting.

pytest-timeout prints each thread's stack when a test overruns, and for an event loop that shows
only the selector: the coroutine that never returns is not in it. So, a little before the timeout,
this prints the stack of every task of the event loop that the tests run on, into the test's
captured stderr (pytest shows it with the error) and into ``test-artifacts/hangs.txt``.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from support import ARTIFACTS

EARLY = 20.0  # seconds before the timeout
_loops: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
async def _remember_the_loop() -> None:
    loop = asyncio.get_running_loop()
    if loop not in _loops:
        _loops.append(loop)


def _tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[object]]:
    for _ in range(10):  # read from another thread: the loop may add a task meanwhile
        try:
            return list(asyncio.all_tasks(loop))
        except RuntimeError:
            time.sleep(0.01)
    return []


def report(nodeid: str) -> str:
    out = io.StringIO()
    out.write(f"\n==== {nodeid} is still running: the asyncio tasks and where each waits ====\n")
    for loop in list(_loops):
        if loop.is_closed():
            continue
        for task in _tasks(loop):
            out.write(f"-- {task!r}\n")
            for frame in task.get_stack(limit=40):
                out.write("".join(traceback.format_stack(frame, limit=1)))
    return out.getvalue()


def _timeout_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = item.config.getoption("timeout", None) or item.config.getini("timeout")
    return float(value or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    timeout = _timeout_of(item)
    timer = None
    if timeout > 2 * EARLY:

        def dump() -> None:
            text = report(item.nodeid)
            print(text, file=sys.stderr, flush=True)
            ARTIFACTS.mkdir(exist_ok=True)
            with (ARTIFACTS / "hangs.txt").open("a") as fh:
                fh.write(text)

        timer = threading.Timer(timeout - EARLY, dump)
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
