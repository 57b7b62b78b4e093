"""Typed errors for API failures, built from the `Status` the server sends.

Kubernetes reports every failure as a `Status` object
(`{"kind":"Status","status":"Failure","reason":"NotFound","code":404,...}`), in an
HTTP response body or in a watch `ERROR` event. `from_status()` turns one into the
most specific class here, chosen by `reason` first and by `code` when the reason is
missing or unknown, the way client-go's `apierrors.ReasonForError`/`IsNotFound` do.

Every class keeps the whole Status (`.status`) and its `.code`, `.reason`,
`.message` and `.details`, and where it is natural is also a builtin exception, in
the manner of aiohttp's `ClientOSError(…, OSError)`:

    NotFound            LookupError        404 NotFound
    AlreadyExists       -                  409 AlreadyExists
    Conflict            -                  409 Conflict (stale resourceVersion, preconditions)
    Gone / Expired      -                  410 Gone / Expired (watch or continue too old)
    Invalid             ValueError         422 Invalid, with `.causes`
    BadRequest          ValueError         400 BadRequest
    Unauthorized        PermissionError    401
    Forbidden           PermissionError    403
    ServerTimeout       TimeoutError       504 / reason Timeout or ServerTimeout
    ServiceUnavailable  ConnectionError    503
    TooManyRequests     -                  429 (honour `.retry_after`)

`TransportError` (a `ConnectionError`) is not a Status: the server could not be
reached, or a stream broke. Callers need not import aiohttp to catch it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Cause:
    """One `details.causes[]` entry of an Invalid Status: what is wrong and where."""

    reason: str  # FieldValueRequired, FieldValueInvalid, ... (`type` on the wire)
    message: str
    field: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ApiError(Exception):
    """A failure the API server reported. `.status` is the Status object as received."""

    default_code = 500

    def __init__(self, status: Mapping[str, Any], *, retry_after: float | None = None) -> None:
        self.status: dict[str, Any] = dict(status)
        self.code: int = int(self.status.get("code") or self.default_code)
        self.reason: str = str(self.status.get("reason") or "")
        self.message: str = str(self.status.get("message") or "")
        self.details: dict[str, Any] = dict(self.status.get("details") or {})
        self.retry_after = retry_after if retry_after is not None else _retry_after_seconds(self.details)
        # One positional argument only: several builtin bases (OSError) read two
        # positional args as (errno, strerror).
        super().__init__(self.message or f"{self.reason or 'error'} ({self.code})")

    def __str__(self) -> str:
        reason = self.reason or type(self).__name__
        return f"({reason}) {self.message}" if self.message else f"{reason} (HTTP {self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, reason={self.reason!r}, message={self.message!r})"


class BadRequest(ApiError, ValueError):
    default_code = 400


class Unauthorized(ApiError, PermissionError):
    default_code = 401


class Forbidden(ApiError, PermissionError):
    default_code = 403


class NotFound(ApiError, LookupError):
    default_code = 404


class MethodNotAllowed(ApiError):
    default_code = 405


class AlreadyExists(ApiError):
    default_code = 409


class Conflict(ApiError):
    default_code = 409


class Gone(ApiError):
    """410: the requested resourceVersion or continue token is no longer available."""

    default_code = 410


class Expired(Gone):
    """410 with reason Expired: `too old resource version` on a watch, or a stale continue."""


class RequestEntityTooLarge(ApiError):
    default_code = 413


class UnsupportedMediaType(ApiError):
    default_code = 415


class Invalid(ApiError, ValueError):
    """422: the object failed validation; `.causes` say which fields and why."""

    default_code = 422

    @property
    def causes(self) -> list[Cause]:
        return [
            Cause(str(c.get("reason") or ""), str(c.get("message") or ""), str(c.get("field") or ""))
            for c in self.details.get("causes") or []
            if isinstance(c, dict)
        ]


class TooManyRequests(ApiError):
    default_code = 429


class InternalError(ApiError):
    default_code = 500


class ServiceUnavailable(ApiError, ConnectionError):
    default_code = 503


class ServerTimeout(ApiError, TimeoutError):
    default_code = 504


class TransportError(ConnectionError):
    """The request did not get an answer: refused, reset, timed out, or a stream broke.

    `connect_failed` is True when no connection could be made (refused, unreachable,
    connect timeout, TLS handshake refused): the request was certainly not sent, so
    any request, a write too, may go to another server.
    """

    def __init__(self, message: str = "", *, connect_failed: bool = False) -> None:
        super().__init__(message)
        self.connect_failed = connect_failed


class DecodeError(TransportError):
    """The server answered with bytes that are not the JSON the API promises."""


_BY_REASON: dict[str, type[ApiError]] = {
    "BadRequest": BadRequest,
    "Unauthorized": Unauthorized,
    "Forbidden": Forbidden,
    "NotFound": NotFound,
    "MethodNotAllowed": MethodNotAllowed,
    "AlreadyExists": AlreadyExists,
    "Conflict": Conflict,
    "Gone": Gone,
    "Expired": Expired,
    "RequestEntityTooLarge": RequestEntityTooLarge,
    "UnsupportedMediaType": UnsupportedMediaType,
    "Invalid": Invalid,
    "TooManyRequests": TooManyRequests,
    "InternalError": InternalError,
    "ServiceUnavailable": ServiceUnavailable,
    "Timeout": ServerTimeout,  # the request could not be completed in time (504)
    "ServerTimeout": ServerTimeout,  # the server asks the client to retry (500 + retryAfter)
}

_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed,
    409: Conflict, 410: Gone, 413: RequestEntityTooLarge, 415: UnsupportedMediaType,
    422: Invalid, 429: TooManyRequests, 500: InternalError, 503: ServiceUnavailable,
    504: ServerTimeout,
}

# What kube-apiserver's client says when a response carries no Status
# (client-go `newUnstructuredResponseError`): the reason follows the code.
_REASON_FOR_CODE: dict[int, str] = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 409: "Conflict", 410: "Gone", 413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


def error_class(reason: str, code: int) -> type[ApiError]:
    """The class for a Status: by reason when known, else by code, else ApiError."""
    cls = _BY_REASON.get(reason)
    if cls is not None:
        return cls
    return _BY_CODE.get(code, ApiError)


def from_status(status: Mapping[str, Any], *, http_code: int | None = None,
                retry_after: float | None = None) -> ApiError:
    """The typed error for a Status object (from a response body or a watch ERROR event)."""
    st = dict(status)
    if not st.get("code") and http_code:
        st["code"] = http_code
    code = int(st.get("code") or 0)
    if not st.get("reason") and code in _REASON_FOR_CODE:
        st["reason"] = _REASON_FOR_CODE[code]
    return error_class(str(st.get("reason") or ""), code)(st, retry_after=retry_after)


def from_response(http_code: int, body: bytes, *, retry_after: float | None = None,
                  what: str = "") -> ApiError:
    """The typed error for a failed HTTP response, whether or not its body is a Status."""
    status: Mapping[str, Any] | None = None
    try:
        decoded = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        status = decoded
    if status is None:
        text = body.decode("utf-8", "replace").strip()[:500]
        message = text or f"the server responded with HTTP {http_code}"
        if what:
            message = f"{what}: {message}"
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                  "message": message, "code": http_code}
    return from_status(status, http_code=http_code, retry_after=retry_after)


def _retry_after_seconds(details: Mapping[str, Any]) -> float | None:
    value = details.get("retryAfterSeconds")
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    return None
