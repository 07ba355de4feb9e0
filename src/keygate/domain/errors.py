"""Errors that carry their APEX error code and the HTTP status keygate answers with.

APEX replies with a generic object ``{"result", "errormsg", "errorcode", "detail"}``; each error
here knows the code and a message a person understands. Messages never contain secrets.
"""

from __future__ import annotations


class KeygateError(Exception):
    """Base class: a refusal that is the caller's business, never an internal fault."""

    errorcode = 101
    http_status = 400
    default_message = "Operation Failed"

    def __init__(self, message: str | None = None, detail: str | None = None) -> None:
        self.message = message or self.default_message
        self.detail = detail
        super().__init__(self.message)


class InvalidRequest(KeygateError):
    """The request is malformed: a missing, empty, oversized or badly formed field."""

    errorcode = 100
    http_status = 400
    default_message = "Invalid Request"


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    default_message = "Request body is too large"


class NotAuthorized(KeygateError):
    """The caller is not signed in, or its session or key may not do this."""

    errorcode = 20
    http_status = 401
    default_message = "Not Authorized"


class Forbidden(NotAuthorized):
    """Signed in, but this principal lacks the right (APEX still calls it Not Authorized)."""

    http_status = 403


class AuthenticationFailed(KeygateError):
    """Credentials were refused. The message is the same whatever was wrong, by design."""

    errorcode = 20
    http_status = 401
    default_message = "Invalid credentials"

    def __init__(self, reason: str, locked: bool = False, public_message: str | None = None) -> None:
        # ``reason`` is the precise internal cause, for the audit trail only. ``public_message`` is set
        # only for causes found after the signature or password proved right (expired key, replay),
        # where telling the caller reveals nothing to someone without the secret.
        super().__init__(public_message or self.default_message)
        self.reason = reason
        self.locked = locked


class NotFound(KeygateError):
    errorcode = 104
    http_status = 404
    default_message = "Resource Not Found"


class Conflict(KeygateError):
    errorcode = 101
    http_status = 409
    default_message = "Operation Failed"


class TooManyRequests(KeygateError):
    errorcode = 101
    http_status = 429
    default_message = "Too many failed attempts; try again later"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(KeygateError):
    errorcode = 102
    http_status = 503
    default_message = "Service temporarily unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database could not be reached or used (down, unreachable, timed out, locked); never a bug."""

    default_message = "Service temporarily unavailable: the database cannot be reached; retry shortly"
