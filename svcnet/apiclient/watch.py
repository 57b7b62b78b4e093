"""Watch: one Kubernetes watch stream as an async iterator of `WatchEvent(type, object)`.

The wire format (kube-apiserver `handlers/watch.go`): a `200` with a chunked body of
JSON objects `{"type": ..., "object": ...}`, one per line. Chunk boundaries mean
nothing: an event may arrive in pieces, or several in one chunk, so bytes are
framed by newlines here (and, to be lenient like client-go's JSON framer, several
objects on one line are accepted too).

* ADDED, MODIFIED, DELETED and BOOKMARK events are yielded as they come.
* An `ERROR` event carries a Status; it ends the watch by raising the typed error
  (`errors.Expired` for 410).
* A clean end of the body (the server's `timeoutSeconds`) ends the iteration;
  a broken connection raises `TransportError`, undecodable bytes `DecodeError`.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple

from svcnet.apiclient import errors
from svcnet.apiclient.objects import Obj
from svcnet.apiclient.transport import Request, Response

# One event larger than this means the stream is not what the API promises.
MAX_EVENT_BYTES = 64 << 20


class WatchEvent(NamedTuple):
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK
    object: Obj


class Watch:
    """One watch stream: an async context manager and an async iterator of WatchEvents."""

    def __init__(self, send: Callable[[Request, str], Awaitable[Response]], request: Request,
                 what: str) -> None:
        self._send, self._request, self._what = send, request, what
        self._resp: Response | None = None
        self._events: AsyncIterator[WatchEvent] | None = None
        self._closed = False

    async def __aenter__(self) -> Watch:
        await self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._closed:
            raise StopAsyncIteration
        if self._events is None:
            await self._open()
            assert self._events is not None
        try:
            return await self._events.__anext__()
        except BaseException:  # the end, an ERROR event, a broken stream, or cancellation
            await self.close()
            raise

    async def close(self) -> None:
        self._closed = True
        if self._resp is not None:
            await self._resp.close()
            self._resp = None
        events, self._events = self._events, None
        if events is not None:
            try:
                await events.aclose()  # type: ignore[attr-defined]
            except RuntimeError:  # closed from another task while it reads: the read fails
                pass

    async def _open(self) -> None:
        if self._resp is not None or self._closed:
            return
        self._resp = await self._send(self._request, self._what)
        self._events = self._decode(self._resp)

    async def _decode(self, resp: Response) -> AsyncIterator[WatchEvent]:
        buf = bytearray()
        async for chunk in resp.iter_chunks():
            scan_from = len(buf)  # only new bytes can hold the next newline
            buf += chunk
            start = 0
            while (nl := buf.find(b"\n", scan_from)) >= 0:
                for event in self._parse(bytes(buf[start:nl])):
                    yield event
                start = scan_from = nl + 1
            del buf[:start]
            if len(buf) > MAX_EVENT_BYTES:
                raise errors.DecodeError(f"{self._what}: an event is larger than {MAX_EVENT_BYTES} bytes")
        for event in self._parse(bytes(buf)):  # a final event without a newline
            yield event

    def _parse(self, line: bytes) -> list[WatchEvent]:
        text = line.strip()
        if not text:
            return []
        out: list[WatchEvent] = []
        decoder, s, pos = json.JSONDecoder(), text.decode("utf-8", "replace"), 0
        # Normally one event per line, but JSON framing allows several back to back.
        while pos < len(s):
            try:
                doc, end = decoder.raw_decode(s, pos)
            except ValueError as e:
                raise errors.DecodeError(f"{self._what}: undecodable event: {e}") from None
            pos = end
            while pos < len(s) and s[pos].isspace():
                pos += 1
            out.append(self._event(doc))
        return out

    def _event(self, doc: Any) -> WatchEvent:
        if not isinstance(doc, dict) or not isinstance(doc.get("object"), dict):
            raise errors.DecodeError(f"{self._what}: not a watch event: {str(doc)[:200]}")
        etype = str(doc.get("type") or "")
        if etype == "ERROR":
            raise errors.from_status(doc["object"])
        if etype not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise errors.DecodeError(f"{self._what}: unknown watch event type {etype!r}")
        return WatchEvent(etype, doc["object"])
