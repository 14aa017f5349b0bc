"""Kubernetes `Status` error objects: every failure the emulator returns has this shape."""

from __future__ import annotations

from typing import Any

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """Raised anywhere in request handling; the middleware renders it as a Status body."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def to_status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(name: str, group: str, kind: str, causes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        d["group"] = group
    if causes:
        d["causes"] = causes
    return d


def not_found(group_resource: str, group: str, plural: str, name: str) -> ApiError:
    return ApiError(404, f'{group_resource} "{name}" not found', "NotFound", _details(name, group, plural))


def already_exists(group_resource: str, group: str, plural: str, name: str) -> ApiError:
    return ApiError(409, f'{group_resource} "{name}" already exists', "AlreadyExists",
                    _details(name, group, plural))


def conflict(group_resource: str, group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {group_resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        "Conflict",
        _details(name, group, plural),
    )


def invalid(kind_group: str, group: str, kind: str, name: str, causes: list[dict[str, Any]]) -> ApiError:
    """422 Invalid, worded like the real API server's aggregate field error."""
    parts = []
    for c in causes:
        field = c.get("field", "")
        parts.append(f"{field}: {c.get('message', '')}" if field else c.get("message", ""))
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(422, f'{kind_group} "{name}" is invalid: {summary}', "Invalid",
                    _details(name, group, kind, causes))


def gone(message: str) -> ApiError:
    return ApiError(410, message, "Expired")
