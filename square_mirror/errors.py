"""The errors of a Square call, as the one client raises them (:mod:`square_mirror.square_api`).

::

    SquareError                 Square answered with an error, or an answer the client cannot use
    ├── SquareNotFound          404
    ├── SquareUnauthorized      401/403, or no token for the merchant
    ├── SquareRateLimited       429 after every retry
    ├── SquareUnavailable       5xx, timeouts, connection failures after every retry
    ├── SquareBadResponse       not the JSON object Square documents
    └── SquareInvalidRequest    any other 4xx: the request itself is wrong

Which of them are transient, and what is retried how, is :mod:`square_mirror.retry`.
"""

from __future__ import annotations

from typing import Any


class SquareError(Exception):
    """Square answered with an error, or an answer the client cannot use."""

    def __init__(self, message: str, *, status: int | None = None, errors: list[dict[str, Any]] | None = None,
                 endpoint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or []
        self.endpoint = endpoint

    @property
    def codes(self) -> list[str]:
        return [str(e.get("code")) for e in self.errors]


class SquareNotFound(SquareError):
    pass


class SquareUnauthorized(SquareError):
    def __init__(self, message: str, *, merchant_id: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.merchant_id = merchant_id


class SquareRateLimited(SquareError):
    """429 after every retry; ``retry_after`` is Square's hint in seconds, when it sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class SquareUnavailable(SquareError):
    """5xx, timeouts or connection failures that outlasted the retries: transient, try again later."""


class SquareBadResponse(SquareError):
    """An answer that is not the JSON object Square documents (HTML page, truncated body, 200 with errors)."""


class SquareInvalidRequest(SquareError):
    """A 4xx other than 401/403/404/429: the request itself is wrong (e.g. INVALID_CURSOR, BAD_REQUEST)."""
