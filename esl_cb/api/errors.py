"""The API's own errors, in the one family of esl_cb/domain/errors.py (stable codes, RFC 9457)."""
from __future__ import annotations

from esl_cb.db.api_records import IdempotencyKeyInUse
from esl_cb.domain.errors import EslCbError, InvalidInput

__all__ = ["Forbidden", "IdempotencyKeyInUse", "IdempotencyKeyReused", "MethodNotAllowed", "RequestTooLarge",
           "TooManyRequests", "Unauthenticated"]


class Unauthenticated(EslCbError):
    """No bearer token, or one that is not valid (never issued, revoked)."""

    code = "unauthenticated"
    http_status = 401
    title = "a valid bearer token is needed"


class Forbidden(EslCbError):
    """The token is valid but its role (or its agent) does not allow this."""

    code = "forbidden"
    http_status = 403
    title = "this token may not do that"


class TooManyRequests(EslCbError):
    """The token sent more requests than its rate limit allows; Retry-After says when to go on."""

    code = "too_many_requests"
    http_status = 429
    title = "too many requests for this token"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key seen before with another request (method, path or body)."""

    code = "idempotency_key_reused"
    http_status = 422
    title = "this Idempotency-Key was used for another request"


class RequestTooLarge(InvalidInput):
    code = "request_too_large"
    http_status = 413
    title = "the request body is too large"


class MethodNotAllowed(EslCbError):
    code = "method_not_allowed"
    http_status = 405
    title = "this method is not allowed here"
