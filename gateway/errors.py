"""The one error tree: every class knows its HTTP status, error code and metrics outcome."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from gateway.clock import iso


class GatewayError(Exception):
    """Base of every error that reaches a client as the JSON error envelope."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    outcome: ClassVar[str] = "error"
    default_message: ClassVar[str] = "Internal error"
    # Headers every answer of this kind carries (a 401's challenge); `headers` adds to them.
    default_headers: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details: dict[str, Any] = dict(details or {})
        self.headers: dict[str, str] = {**self.default_headers, **(headers or {})}
        super().__init__(self.message)

    def envelope(self, now: datetime) -> dict[str, Any]:
        """The JSON body of SPEC section 4."""
        return {
            "success": False,
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "timestamp": iso(now),
            },
        }


class NotFound(GatewayError):
    status, code, outcome, default_message = (
        404,
        "RESOURCE_NOT_FOUND",
        "rejected_input",
        "Not found",
    )


class MethodNotAllowed(GatewayError):
    status, code, outcome = 405, "METHOD_NOT_ALLOWED", "rejected_input"
    default_message = "Method not allowed"


class PayloadTooLarge(GatewayError):
    status, code, outcome = 413, "PAYLOAD_TOO_LARGE", "rejected_input"
    default_message = "Request body too large"


class ClientClosedRequest(GatewayError):
    """The client hung up before the request was sent upstream (nginx's 499)."""

    status, code, outcome = 499, "CLIENT_CLOSED_REQUEST", "client_canceled"
    default_message = "The client closed the connection"


class RequestTimeout(GatewayError):
    status, code, outcome = 408, "REQUEST_TIMEOUT", "rejected_input"
    default_message = "The request body did not arrive in time"


class ValidationFailed(GatewayError):
    status, code, outcome = 400, "VALIDATION_ERROR", "rejected_input"
    default_message = "Invalid request"


class MissingApiKey(GatewayError):
    status, code, outcome = 401, "MISSING_API_KEY", "rejected_auth"
    default_message = "Missing API key: send Authorization: Bearer <key>"
    default_headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class InvalidApiKey(GatewayError):
    status, code, outcome = 401, "INVALID_API_KEY", "rejected_auth"
    default_message = "Invalid or revoked API key"
    default_headers: ClassVar[Mapping[str, str]] = {
        "WWW-Authenticate": 'Bearer error="invalid_token"'
    }  # RFC 6750


class SubscriptionInactive(GatewayError):
    status, code, outcome = 403, "SUBSCRIPTION_INACTIVE", "rejected_permission"
    default_message = "The subscription is not active"


class InsufficientPermissions(GatewayError):
    status, code, outcome = 403, "INSUFFICIENT_PERMISSIONS", "rejected_permission"
    default_message = "This route is not available on your plan"


class InsufficientCredits(GatewayError):
    status, code, outcome = 403, "INSUFFICIENT_CREDITS", "rejected_credits"
    default_message = "Not enough credits left in this billing cycle"


class RateLimitExceeded(GatewayError):
    status, code, outcome = 429, "RATE_LIMIT_EXCEEDED", "rejected_rate"
    default_message = "Too many requests per second"


class ConcurrentLimitExceeded(GatewayError):
    status, code, outcome = 429, "CONCURRENT_LIMIT_EXCEEDED", "rejected_concurrency"
    default_message = "Too many concurrent requests for this organization"


class UpstreamError(GatewayError):
    status, code, outcome = 502, "UPSTREAM_ERROR", "upstream_error"
    default_message = "The upstream could not be reached"


class UpstreamTimeout(GatewayError):
    status, code, outcome = 504, "UPSTREAM_TIMEOUT", "upstream_timeout"
    default_message = "The upstream did not answer in time"


class ServiceUnavailable(GatewayError):
    status, code, outcome = 503, "SERVICE_UNAVAILABLE", "unavailable"
    default_message = "The gateway's store is unavailable; retry shortly"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Unauthorized(GatewayError):
    status, code, outcome = 401, "UNAUTHORIZED", "rejected_auth"
    default_message = "Missing or wrong admin token"
    default_headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class AdminDisabled(GatewayError):
    status, code, outcome = 403, "ADMIN_DISABLED", "rejected_auth"
    default_message = "The admin API is disabled: set GATEWAY_ADMIN_TOKEN"


class Conflict(GatewayError):
    status, code, outcome = 409, "CONFLICT", "rejected_input"
    default_message = "Conflict"


class IdempotencyConflict(GatewayError):
    status, code, outcome = 409, "RESOURCE_ALREADY_EXISTS", "rejected_input"
    default_message = "This Idempotency-Key is in use"


class ConfigRejected(GatewayError):
    status, code, outcome = 422, "CONFIG_INVALID", "rejected_input"
    default_message = "The catalog is invalid; the previous catalog stays in force"


class StoreError(Exception):
    """The store could not be reached or answered nonsense; mapped to ServiceUnavailable.

    `maybe_applied`: the command may have been sent, so it may still run (a timeout, a
    connection lost mid-call); False only when it surely never left the process."""

    def __init__(self, message: str, *, retry_after_s: int = 1, maybe_applied: bool = True) -> None:
        self.retry_after_s = retry_after_s
        self.maybe_applied = maybe_applied
        super().__init__(message)


class CatalogInvalid(Exception):
    """A catalog failed validation; `problems` holds one `location: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))
