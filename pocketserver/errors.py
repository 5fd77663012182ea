"""Matrix error codes and the exception tree the API layer renders.

::

    MatrixError(status, errcode, message, **extra)      -> {"errcode", "error", **extra}
      +-- NotFound            404 M_NOT_FOUND
      +-- Forbidden           403 M_FORBIDDEN
      +-- BadJson             400 M_BAD_JSON
      +-- NotJson             400 M_NOT_JSON
      +-- MissingParam        400 M_MISSING_PARAM
      +-- InvalidParam        400 M_INVALID_PARAM
      +-- Unrecognized        404/405 M_UNRECOGNIZED
      +-- LimitExceeded       429 M_LIMIT_EXCEEDED (retry_after_ms)
      +-- TooLarge            413 M_TOO_LARGE
      +-- UnknownToken        401 M_UNKNOWN_TOKEN (soft_logout)
      +-- MissingToken        401 M_MISSING_TOKEN
      +-- UserLocked          401 M_USER_LOCKED (soft_logout)
      +-- UserSuspended       403 M_USER_SUSPENDED
      +-- InviteBlocked       403 M_INVITE_BLOCKED

Services raise these; ``protocol/`` raises its own exceptions which services translate.
Anything else reaching the app's handler becomes 500 ``M_UNKNOWN`` with the traceback
logged, never shown.
"""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """An error with a Matrix errcode, rendered as ``{"errcode", "error", **extra}``."""

    def __init__(self, status: int, errcode: str, message: str = "", **extra: Any) -> None:
        super().__init__(message or errcode)
        self.status = status
        self.errcode = errcode
        self.message = message or errcode
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.message, **self.extra}


class NotFound(MatrixError):
    def __init__(self, message: str = "Not found", **extra: Any) -> None:
        super().__init__(404, "M_NOT_FOUND", message, **extra)


class Forbidden(MatrixError):
    def __init__(self, message: str = "Forbidden", **extra: Any) -> None:
        super().__init__(403, "M_FORBIDDEN", message, **extra)


class BadJson(MatrixError):
    def __init__(self, message: str = "Bad JSON", **extra: Any) -> None:
        super().__init__(400, "M_BAD_JSON", message, **extra)


class NotJson(MatrixError):
    def __init__(self, message: str = "Content not JSON", **extra: Any) -> None:
        super().__init__(400, "M_NOT_JSON", message, **extra)


class MissingParam(MatrixError):
    def __init__(self, message: str = "Missing parameter", **extra: Any) -> None:
        super().__init__(400, "M_MISSING_PARAM", message, **extra)


class InvalidParam(MatrixError):
    def __init__(self, message: str = "Invalid parameter", **extra: Any) -> None:
        super().__init__(400, "M_INVALID_PARAM", message, **extra)


class Unrecognized(MatrixError):
    def __init__(self, message: str = "Unrecognized request", status: int = 404) -> None:
        super().__init__(status, "M_UNRECOGNIZED", message)


class LimitExceeded(MatrixError):
    def __init__(self, retry_after_ms: int, message: str = "Too many requests") -> None:
        super().__init__(429, "M_LIMIT_EXCEEDED", message, retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


class TooLarge(MatrixError):
    def __init__(self, message: str = "Request too large") -> None:
        super().__init__(413, "M_TOO_LARGE", message)


class UnknownToken(MatrixError):
    def __init__(self, message: str = "Unknown access token", soft_logout: bool = False) -> None:
        super().__init__(401, "M_UNKNOWN_TOKEN", message, soft_logout=soft_logout)


class MissingToken(MatrixError):
    def __init__(self, message: str = "Missing access token") -> None:
        super().__init__(401, "M_MISSING_TOKEN", message)


class UserLocked(MatrixError):
    """A locked account ("Account locking"): everything but /logout and /logout/all."""

    def __init__(self, message: str = "This account has been locked") -> None:
        super().__init__(401, "M_USER_LOCKED", message, soft_logout=True)


class UserSuspended(MatrixError):
    """An action a suspended account may not take ("Account suspension")."""

    def __init__(self, message: str = "You cannot perform this action while suspended.") -> None:
        super().__init__(403, "M_USER_SUSPENDED", message)


class InviteBlocked(MatrixError):
    """The invitee blocks invites (modules/invite_permission.md)."""

    def __init__(self, message: str = "This user does not accept invites") -> None:
        super().__init__(403, "M_INVITE_BLOCKED", message)
