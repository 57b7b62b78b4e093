"""Stopping background tasks without hanging a shutdown."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[object] | None, timeout: float = 5.0) -> None:
    """Cancel `tasks` and wait for them to finish, at most `timeout` seconds.

    A task that swallows its cancellation (a retry loop catching too much, a call
    blocked in a library) must not turn a clean stop into a hang: after the timeout
    it is logged and left behind, and the caller carries on closing what it owns.
    """
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    if not live:
        return
    done, pending = await asyncio.wait(live, timeout=timeout)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r while stopping", t.get_name(), t.exception())
    for t in pending:
        log.warning("task %s did not stop within %.0fs of cancellation; leaving it", t.get_name(), timeout)
