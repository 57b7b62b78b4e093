"""/healthz, /livez and /readyz as kube-apiserver answers them (k8s.io/apiserver
`pkg/server/healthz`).

Each endpoint runs a list of named checks. All pass: `200 ok` (`?verbose`: one
`[+]NAME ok` line per check, then `<endpoint> check passed`). One fails: 500 with every
check listed, the failures as `[-]NAME failed: reason withheld` (the endpoints are
public, so the reason only goes to the log), then `<endpoint> check failed`.
`?exclude=NAME` skips a check; `/readyz/NAME` runs one (authenticated, as in kube).

* `/livez`: `ping` only. A store outage is not a reason to restart the API server:
  restarting would not bring etcd back, and the server resumes by itself.
* `/readyz`: `ping`, the store's check (`etcd` or `sqlite`: a linearizable read that
  must answer within `STORAGE_CHECK_TIMEOUT`), and `shutdown` (fails once SIGTERM was
  received, so a load balancer drains the server before it stops).
* `/healthz`: the deprecated union, as kube keeps it: `ping` and the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.storage.interface import Storage

log = logging.getLogger(__name__)

#: seconds the store's check may take before it counts as failed (kube: 2 s for etcd)
STORAGE_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class HealthCheck:
    """A named check: `run()` returns when healthy and raises saying why not."""

    name: str
    run: Callable[[], Awaitable[None]]


async def _ping() -> None:
    return None


PING = HealthCheck("ping", _ping)


def storage_check(storage: Storage, timeout: float | None = None) -> HealthCheck:
    async def run() -> None:
        limit = timeout if timeout is not None else STORAGE_CHECK_TIMEOUT
        try:
            await asyncio.wait_for(storage.check(), limit)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer within {limit:g}s") from None

    return HealthCheck(storage.check_name, run)


def shutdown_check(stopping: asyncio.Event) -> HealthCheck:
    async def run() -> None:
        if stopping.is_set():
            raise RuntimeError("the server is shutting down")

    return HealthCheck("shutdown", run)


async def _failure(check: HealthCheck) -> str | None:
    """Why `check` failed, or None when it passed."""
    try:
        await check.run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a check may fail any way it likes; the reason is logged
        return str(exc) or type(exc).__name__
    return None


Handler = Callable[[web.Request], Awaitable[web.Response]]


def endpoint(name: str, checks: Sequence[HealthCheck]) -> tuple[Handler, Handler]:
    """The handlers of `/NAME` (every check) and `/NAME/{check}` (one check)."""

    async def run_all(request: web.Request) -> web.Response:
        excluded = set(request.query.getall("exclude", []))
        unknown = excluded - {c.name for c in checks}
        if unknown:
            # kube logs and ignores unknown exclusions; saying so helps the reader
            log.info("%s: cannot exclude unknown checks %s", name, ",".join(sorted(unknown)))
        selected = [c for c in checks if c.name not in excluded]
        return await _answer(name, selected, verbose="verbose" in request.query)

    async def run_one(request: web.Request) -> web.Response:
        wanted = request.match_info["check"]
        selected = [c for c in checks if c.name == wanted]
        if not selected:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return await _answer(name, selected, verbose="verbose" in request.query)

    return run_all, run_one


async def _answer(name: str, checks: Sequence[HealthCheck], verbose: bool) -> web.Response:
    failures = await asyncio.gather(*(_failure(c) for c in checks))
    lines = [f"[-]{c.name} failed: reason withheld" if why is not None else f"[+]{c.name} ok"
             for c, why in zip(checks, failures)]
    failed = [(c.name, why) for c, why in zip(checks, failures) if why is not None]
    headers = {"X-Content-Type-Options": "nosniff"}
    if failed:
        log.warning("%s check failed: %s", name, "; ".join(f"{n}: {why}" for n, why in failed))
        body = "\n".join(lines) + f"\n{name} check failed\n"
        return web.Response(status=500, text=body, headers=headers)
    if not verbose:
        return web.Response(text="ok", headers=headers)
    return web.Response(text="\n".join(lines) + f"\n{name} check passed\n", headers=headers)


def add_routes(router: web.UrlDispatcher, storage: Storage, stopping: asyncio.Event) -> None:
    store = storage_check(storage)
    for name, checks in (("livez", [PING]), ("healthz", [PING, store]),
                         ("readyz", [PING, store, shutdown_check(stopping)])):
        run_all, run_one = endpoint(name, checks)
        router.add_get(f"/{name}", run_all)
        router.add_get(f"/{name}/{{check}}", run_one)
