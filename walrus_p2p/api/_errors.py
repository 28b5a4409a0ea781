"""The one place where failures become HTTP error replies.

Every error body has the shape ``{"error": {"code": <status>, "reason": "UPPER_SNAKE",
"message": "..."}}``. Reasons are stable and documented in docs/http-api.md; anything not mapped
on purpose becomes ``500 INTERNAL`` with a fixed message, and the details go to the log only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from walrus_p2p.errors import (
    InconsistentBlobError,
    InsufficientFundsError,
    NetworkError,
    NotFoundError,
    OrderRefusedError,
    QuorumError,
    RequestTimeoutError,
    WalrusError,
)

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the gateway log has the details"


class ApiError(Exception):
    """A failure the gateway answers with a specific status and reason (raised by handlers)."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, int | str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = dict(headers or {})
        self.details = dict(details or {})
        """More fields of the error object (a 402's ``needed`` and ``balance``)."""


def error_response(
    status: int,
    reason: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, int | str] | None = None,
) -> Response:
    """The JSON error body; errors are never cached (a 404 may turn into a blob later)."""
    all_headers = {"Cache-Control": "no-store"}
    all_headers.update(headers or {})
    body: dict[str, int | str] = {**(details or {}), "code": status, "reason": reason}
    body["message"] = message
    return JSONResponse({"error": body}, status_code=status, headers=all_headers)


def api_error_response(error: ApiError) -> Response:
    return error_response(error.status, error.reason, error.message, error.headers, error.details)


def blob_not_found() -> ApiError:
    return ApiError(404, "BLOB_NOT_FOUND", "no certified blob with this id")


def blob_inconsistent() -> ApiError:
    """410 Gone: the blob id is known but its content will never be readable."""
    return ApiError(410, "BLOB_INCONSISTENT", "the blob was encoded inconsistently by its writer")


def walrus_error_to_api(error: WalrusError) -> ApiError | None:
    """Map the service's errors that callers can act on; ``None`` means "unexpected"."""
    if isinstance(error, NotFoundError):
        return blob_not_found()
    if isinstance(error, InconsistentBlobError):
        return blob_inconsistent()
    if isinstance(error, InsufficientFundsError):
        # The gateway's own wallet cannot pay for this store (docs/http-api.md, "Errors").
        return ApiError(
            402,
            "PAYMENT_REQUIRED",
            f"the gateway's wallet cannot pay for this store: it costs {error.needed} FROST, "
            f"the balance is {error.balance} FROST",
            details={"needed": error.needed, "balance": error.balance},
        )
    if isinstance(error, OrderRefusedError):
        return ApiError(
            503,
            "PAYMENT_FAILED",
            f"the committee refused the gateway's payment ({error.reason})",
            details={"orderReason": error.reason},
        )
    if isinstance(error, QuorumError):
        return ApiError(504, "NOT_ENOUGH_PEERS", "not enough storage peers answered")
    if isinstance(error, RequestTimeoutError):
        return ApiError(504, "TIMEOUT", "the storage network did not answer in time")
    if isinstance(error, NetworkError):
        return ApiError(502, "NETWORK_ERROR", "the storage network could not be reached")
    return None


def unexpected_error_response(error: BaseException, context: str) -> Response:
    """Log the full error and answer ``500 INTERNAL`` without any detail."""
    logger.error("unexpected gateway error %s", context, exc_info=error)
    return error_response(500, "INTERNAL", INTERNAL_MESSAGE)


_STATUS_REASONS = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


async def http_exception_handler(request: Request, error: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in our JSON shape."""
    if not isinstance(error, HTTPException):
        return await internal_exception_handler(request, error)
    reason = _STATUS_REASONS.get(error.status_code, "BAD_REQUEST")
    if error.status_code >= 500:
        return unexpected_error_response(error, f"path={request.url.path}")
    return error_response(error.status_code, reason, str(error.detail), error.headers)


async def internal_exception_handler(request: Request, error: Exception) -> Response:
    """Last resort for anything that escaped a handler."""
    return unexpected_error_response(error, f"path={request.url.path}")
