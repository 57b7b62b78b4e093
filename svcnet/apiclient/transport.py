"""The HTTP seam under `RestClient`: one small `Transport` protocol, two implementations.

`AiohttpTransport` is the real one (a lazily created `aiohttp.ClientSession`, TLS
from the kubeconfig). `MockTransport` answers from a function, in the spirit of
httpx's `MockTransport`, so client code can be tested without sockets:

    async def handler(req: Request) -> MockResponse:
        return MockResponse(404, {"kind": "Status", "reason": "NotFound", "code": 404})
    client = RestClient("https://k8s.test", transport=MockTransport(handler))

A `Response` is returned as soon as the status line and headers arrive; the body
is read with `read()` or streamed with `iter_chunks()` (watches), and must be
`close()`d. Every failure to get or read an answer raises `TransportError`, so
nothing above this module needs to know aiohttp.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Protocol

import aiohttp
from multidict import CIMultiDict

from svcnet.apiclient.errors import TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One HTTP request as the client means it."""

    method: str
    url: str  # absolute, query included
    headers: Mapping[str, str]
    body: bytes | None = None
    timeout: float | None = None  # the whole exchange, body included (None: unbounded)
    read_timeout: float | None = None  # streams: the longest silence tolerated between chunks
    connect_timeout: float | None = None  # reaching the server (TCP and TLS handshakes)
    stream: bool = False

    def json(self) -> Any:
        """The body decoded as JSON (handy in MockTransport handlers)."""
        return json.loads(self.body) if self.body else None


class Response(Protocol):
    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def read(self) -> bytes: ...
    def iter_chunks(self) -> AsyncIterator[bytes]: ...
    async def close(self) -> None: ...


class Transport(Protocol):
    async def send(self, request: Request) -> Response: ...
    async def close(self) -> None: ...


# -- aiohttp ---------------------------------------------------------------------

_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except _TRANSPORT_ERRORS as e:
            raise TransportError(f"reading the response to {self._resp.method} {self._resp.url}: "
                                 f"{_describe(e)}") from e

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except _TRANSPORT_ERRORS as e:
            raise TransportError(f"stream {self._resp.url.path} broke: {_describe(e)}") from e

    async def close(self) -> None:
        self._resp.close()  # drops the connection when the body was not read to the end


class AiohttpTransport:
    """HTTP over one aiohttp session, created on first use inside the running loop."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *,
                 server_hostname: str | None = None,
                 session: aiohttp.ClientSession | None = None,
                 connection_limit: int = 100) -> None:
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._session = session
        self._owns_session = session is None
        self._limit = connection_limit

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True,
                                             limit=self._limit)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=None))
            self._owns_session = True
        return self._session

    async def send(self, request: Request) -> Response:
        timeout = aiohttp.ClientTimeout(total=request.timeout, sock_read=request.read_timeout,
                                        connect=request.connect_timeout)
        kwargs: dict[str, Any] = {}
        if self._server_hostname:
            kwargs["server_hostname"] = self._server_hostname
        try:
            resp = await self._get_session().request(
                request.method, request.url, headers=dict(request.headers), data=request.body,
                timeout=timeout, allow_redirects=False, **kwargs)
        except _TRANSPORT_ERRORS as e:
            raise TransportError(f"{request.method} {_strip_query(request.url)}: {_describe(e)}",
                                 connect_failed=_not_sent(e)) from e
        return _AiohttpResponse(resp)

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


def _not_sent(e: BaseException) -> bool:
    """Whether the failure happened before the request could leave (no connection)."""
    return isinstance(e, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]


# -- mock ------------------------------------------------------------------------


@dataclass
class MockResponse:
    """A canned answer: `body` as bytes or JSON-able data, or `chunks` to stream."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: AsyncIterable[bytes] | list[bytes] | None = None

    def __post_init__(self) -> None:
        hdrs = CIMultiDict(self.headers)
        if self.body is not None and not isinstance(self.body, (bytes, bytearray)):
            self.body = json.dumps(self.body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        self.headers = hdrs
        self.closed = False

    async def read(self) -> bytes:
        if self.chunks is not None:
            return b"".join([c async for c in self.iter_chunks()])
        return bytes(self.body or b"")

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self.chunks is None:
            if self.body:
                yield bytes(self.body)
            return
        if isinstance(self.chunks, list):
            for c in self.chunks:
                yield c
        else:
            async for c in self.chunks:
                yield c

    async def close(self) -> None:
        self.closed = True


MockHandler = Callable[[Request], "MockResponse | Awaitable[MockResponse]"]


class MockTransport:
    """Answers every request with `handler(request)`; records the requests it saw."""

    def __init__(self, handler: MockHandler) -> None:
        self._handler = handler
        self.requests: list[Request] = []

    async def send(self, request: Request) -> Response:
        self.requests.append(request)
        result = self._handler(request)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, MockResponse), "MockTransport handlers return MockResponse"
        return result

    async def close(self) -> None:
        return None
