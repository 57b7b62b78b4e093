"""API errors as Kubernetes states them: every failure becomes a `Status` object.

The registry raises `APIError`; the HTTP layer turns it into the response. One place
knows the reasons and codes so that kubectl prints what users expect
(`Error from server (NotFound): services "web" not found`).
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A failure with an HTTP code and a Kubernetes reason (NotFound, Conflict, …)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            st["details"] = self.details
        return st


def not_found(resource: str, name: str, group: str = "") -> APIError:
    qualified = f"{resource}.{group}" if group else resource
    return APIError(404, "NotFound", f'{qualified} "{name}" not found',
                    {"name": name, "group": group or None, "kind": resource} if group else
                    {"name": name, "kind": resource})


def already_exists(resource: str, name: str, group: str = "") -> APIError:
    qualified = f"{resource}.{group}" if group else resource
    return APIError(409, "AlreadyExists", f'{qualified} "{name}" already exists',
                    {"name": name, "group": group, "kind": resource})


def conflict(resource: str, name: str, group: str = "") -> APIError:
    qualified = f"{resource}.{group}" if group else resource
    return APIError(409, "Conflict",
                    f'Operation cannot be fulfilled on {qualified} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": name, "group": group, "kind": resource})


def invalid(kind: str, name: str, causes: list[tuple[str, str, str]], group: str = "") -> APIError:
    """422. `causes` are (reason, field, message) as in `FieldValueRequired`,
    `spec.ports[0].name`, `Required value`."""
    text = "; ".join(f"{f}: {m}" for _, f, m in causes) if len(causes) == 1 else \
        "[" + ", ".join(f"{f}: {m}" for _, f, m in causes) + "]"
    return APIError(422, "Invalid", f'{kind} "{name}" is invalid: {text}',
                    {"name": name, "group": group, "kind": kind,
                     "causes": [{"reason": r, "message": f"{m}", "field": f} for r, f, m in causes]})


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def gone(message: str) -> APIError:
    return APIError(410, "Expired", message)
