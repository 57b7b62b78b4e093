"""A small client for etcd's v3 JSON gateway (`POST /v3/<service>/<method>`), over aiohttp.

What it adds to plain HTTP (see docs `reference/etcd.md` §2-§6 for the wire format):

* **member failover**: a request goes to the member that answered last and on failure
  to the next, until `deadline`; a member that refuses the connection is skipped at
  once, so a dead cluster fails within milliseconds (`EtcdUnavailableError`, 503);
* **leader awareness**: every request carries the gRPC metadata `hasleader` (gateway
  header `Grpc-Metadata-hasleader`), so a member cut off from the leader refuses at
  once with "no leader" instead of holding the request for etcd's 7 s timeout; such a
  refusal is known not to have been applied. Watches get cancelled by such a member;
* **unknown outcomes**: a write that was sent and then got no answer (timeout, reset,
  "request timed out") may still land. `call` reports that, and re-sends only writes
  the caller marks as guarded (compare-and-swap txns, which cannot apply twice);
* **errors as Status**: `EtcdUnavailableError` (503) and `EtcdTimeoutError` (504) are
  both `StorageError` and `APIError`, so the apiserver answers with a Kubernetes Status
  without knowing about etcd;
* **watch streams**: `stream` yields the `result` objects of one `POST /v3/watch`
  (newline-delimited JSON, one watch per HTTP request in etcd 3.4's gateway).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.storage.interface import StorageError

log = logging.getLogger(__name__)

Json = dict[str, Any]

GRPC_INVALID_ARGUMENT, GRPC_DEADLINE, GRPC_OUT_OF_RANGE, GRPC_UNAVAILABLE = 3, 4, 11, 14
_HEADERS = {"Grpc-Metadata-hasleader": "true", "Content-Type": "application/json"}


class EtcdUnavailableError(StorageError, APIError):
    """No etcd member could serve the request: the API answers 503 (retry shortly)."""

    def __init__(self, detail: str) -> None:
        APIError.__init__(self, 503, "ServiceUnavailable",
                          f"storage is unavailable: etcd cluster is unreachable ({detail})",
                          {"retryAfterSeconds": 1})


class EtcdTimeoutError(StorageError, APIError):
    """etcd did not answer in time (partition, overload): 504; a write may have landed."""

    def __init__(self, detail: str) -> None:
        APIError.__init__(self, 504, "Timeout",
                          f"Timeout: request did not complete within the allotted timeout: etcd: {detail}",
                          {"retryAfterSeconds": 1})


class EtcdError(StorageError):
    """An error answer from etcd (gRPC code and message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd: {message} (code {code})")
        self.code, self.etcd_message = code, message


class WatchCompacted(Exception):
    """etcd cancelled a watch because its start revision was compacted."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"watch start compacted at {revision}")
        self.revision = revision


def parse_etcd_url(url: str) -> list[str]:
    """`etcd://HOST:PORT[,HOST:PORT…]` → ["http://HOST:PORT", …] (IPv6 as [ADDR]:PORT).
    `http://` is accepted for etcd:// (and `etcds://`/`https://` give https URLs)."""
    scheme, sep, rest = url.partition("://")
    schemes = {"etcd": "http", "http": "http", "etcds": "https", "https": "https"}
    if not sep or scheme not in schemes:
        raise ValueError(f"invalid etcd storage {url!r}: want etcd://HOST:PORT[,HOST:PORT…]")
    out = []
    for part in rest.split(","):
        part = part.strip().rstrip("/")
        host, colon, port = part.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid etcd endpoint {part!r} in {url!r}: want HOST:PORT")
        out.append(f"{schemes[scheme]}://{part}")
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def bytes_end(prefix: bytes) -> bytes:
    """etcd's range_end for a prefix: the prefix with its last byte incremented."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\x00"  # the whole keyspace


class EtcdClient:
    """Requests to the members of one etcd cluster; see the module docstring."""

    def __init__(self, endpoints: Sequence[str], *, request_timeout: float = 2.0,
                 deadline: float = 5.0, election_grace: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e if "://" in e else f"http://{e}" for e in endpoints]
        self.request_timeout, self.deadline, self.election_grace = request_timeout, deadline, election_grace
        self.current = 0          # the member that answered last
        self.last_error = ""      # why the last request failed ("" after a success)
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._session = aiohttp.ClientSession(headers=_HEADERS, connector=aiohttp.TCPConnector(limit=256))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, body: Json, *, guarded: bool = True) -> tuple[Json, bool]:
        """POST /v3/<method> to the first member that serves it. Returns the answer and
        whether an earlier attempt may have been applied (sent, then no answer); after
        such an attempt an unguarded write is not re-sent (EtcdTimeoutError instead)."""
        if self._session is None:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.deadline
        data = json.dumps(body, separators=(",", ":"))
        n = len(self.endpoints)
        first = self.current % n
        unknown = False
        refused: set[int] = set()      # members that refused the connection
        leaderless: set[int] = set()   # members that answered "no leader" (nothing applied)
        errors: list[str] = []
        for attempt in itertools.count():
            remaining = deadline - loop.time()
            if remaining <= 0.05:
                break
            index = (first + attempt) % n
            endpoint = self.endpoints[index]
            try:
                async with self._session.post(
                        f"{endpoint}/v3/{method}", data=data,
                        timeout=aiohttp.ClientTimeout(total=min(self.request_timeout, remaining))) as resp:
                    payload = json.loads(await resp.read() or b"{}")
                if resp.status == 200 and "error" not in payload:
                    self.current = index  # stay with a member that answers
                    self.last_error = ""
                    return payload, unknown
                code = int(payload.get("code", 2))
                message = str(payload.get("message") or payload.get("error") or resp.reason)
                if code not in (GRPC_UNAVAILABLE, GRPC_DEADLINE):
                    raise EtcdError(code, message)
                errors.append(f"{endpoint}: {message}")
                refused.discard(index)
                if "no leader" in message:  # refused before proposing: not applied
                    leaderless.add(index)
                else:  # leader changed, request timed out: the write may still land
                    leaderless.discard(index)
                    unknown = unknown or method != "kv/range"
            except aiohttp.ClientConnectorError as err:
                errors.append(f"{endpoint}: {err.os_error or err}")
                refused.add(index)
                leaderless.discard(index)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:
                errors.append(f"{endpoint}: {type(err).__name__} {err}".strip())
                unknown = unknown or method != "kv/range"
                refused.discard(index)
                leaderless.discard(index)
            if len(refused) == n or (len(refused | leaderless) == n
                                     and loop.time() - started > self.election_grace):
                break  # every member refused, or none has had a leader for longer than an election
            if unknown and not guarded:
                break
            (log.info if attempt == 0 else log.debug)(
                "etcd %s via %s failed (%s)%s; trying the next member", method, endpoint, errors[-1],
                ", outcome unknown" if unknown else "")
            if index == (first + n - 1) % n:
                await asyncio.sleep(0.05)  # a full round failed: let an election finish
        detail = "; ".join(errors[-n:]) or "no answer"
        self.last_error = detail
        if len(refused | leaderless) == n and not unknown:
            raise EtcdUnavailableError(detail)
        raise EtcdTimeoutError(detail)

    async def stream(self, endpoint: str, create_request: Json,
                     on_open: Callable[[aiohttp.ClientResponse], None] | None = None
                     ) -> AsyncIterator[Json]:
        """One etcd watch: the `result` objects of its stream. Raises WatchCompacted when
        the start revision was compacted, StorageError when etcd cancels the watch or
        the stream ends. `on_open(response)` lets the caller close it from outside."""
        if self._session is None:
            raise StorageError("storage is closed")
        timeout = aiohttp.ClientTimeout(total=None, connect=self.request_timeout,
                                        sock_connect=self.request_timeout, sock_read=None)
        async with self._session.post(f"{endpoint}/v3/watch", json={"create_request": create_request},
                                      timeout=timeout) as resp:
            if resp.status != 200:
                raise StorageError(f"watch refused: {resp.status} {(await resp.read())[:200]!r}")
            if on_open is not None:
                on_open(resp)
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                buf += chunk
                start = 0
                while (nl := buf.find(b"\n", start)) >= 0:
                    line = bytes(buf[start:nl])
                    start = nl + 1
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        err = msg["error"]
                        raise StorageError(f"watch error: {err.get('message') if isinstance(err, dict) else err}")
                    r = msg.get("result") or {}
                    if r.get("canceled"):
                        compacted = int(r.get("compact_revision", 0))
                        if compacted:
                            raise WatchCompacted(compacted)
                        raise StorageError(f"watch canceled: {r.get('cancel_reason') or 'no reason given'}")
                    yield r
                del buf[:start]
        raise StorageError(f"watch stream from {endpoint} ended")
