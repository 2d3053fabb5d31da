"""Running a coroutine now instead of in a task.

Most coroutines on the hot paths (an API command, a client's connect) finish without
waiting for anything: with the memory engine everything they touch is this worker's
memory. Creating a task for each costs an object, a loop turn and its scheduling.
`run_eager` runs the coroutine at once; only one that does wait continues from the
callbacks of what it waits on, as a task would, still without a task.
"""

from __future__ import annotations

import asyncio
from typing import Any


def run_eager(coro: Any) -> Any:
    """The coroutine's result when it completes without waiting, else a future of it.

    An exception raised before the first wait propagates to the caller; later ones are
    set on the returned future.
    """
    try:
        waiting = coro.send(None)
    except StopIteration as done:
        return done.value
    loop = asyncio.get_running_loop()
    result = loop.create_future()

    def resume(_: Any = None) -> None:
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            result.set_result(done.value)
        except BaseException as exc:
            result.set_exception(exc)
        else:
            wait(waiting)

    def wait(waiting: Any) -> None:
        if waiting is None:                 # a bare yield (asyncio.sleep(0)): next turn
            loop.call_soon(resume)
        else:
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(resume)

    wait(waiting)
    return result
