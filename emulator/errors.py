"""Square's error envelope and the exact error bodies the emulator returns.

Every failing response is ``{"errors": [{"category", "code", "detail", "field"?}]}`` and the HTTP
status matches the first error (Square's handling-errors guide). Wording that Square has published
verbatim (404 for customers, unrecognised fields, invalid phone number) is reproduced exactly.
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "INVALID_REQUEST_ERROR"
AUTHENTICATION = "AUTHENTICATION_ERROR"
RATE_LIMIT = "RATE_LIMIT_ERROR"
API_ERROR = "API_ERROR"


def error(code: str, detail: str, *, category: str = INVALID_REQUEST, field: str | None = None) -> dict[str, Any]:
    """One entry of an ``errors`` array, keys in Square's order."""
    out: dict[str, Any] = {"code": code, "detail": detail}
    if field is not None:
        out["field"] = field
    out["category"] = category
    return out


class SquareError(Exception):
    """Raised anywhere in request handling; the middleware turns it into the JSON error response."""

    def __init__(self, status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        super().__init__(errors[0]["code"] if errors else "ERROR")
        self.status = status
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"errors": self.errors}


def bad_request(detail: str, field: str | None = None, code: str = "BAD_REQUEST") -> SquareError:
    return SquareError(400, [error(code, detail, field=field)])


def customer_not_found(customer_id: str) -> dict[str, Any]:
    """The per-item / top-level body Square returns for an unknown or deleted customer ID (verbatim)."""
    return error("NOT_FOUND", f"Customer with ID `{customer_id}` not found.")


def customer_not_found_error(customer_id: str) -> SquareError:
    return SquareError(404, [customer_not_found(customer_id)])


def group_not_found_error(group_id: str) -> SquareError:
    return SquareError(404, [error("NOT_FOUND", f"Customer group with ID `{group_id}` not found.")])


def segment_not_found_error(segment_id: str) -> SquareError:
    return SquareError(404, [error("NOT_FOUND", f"Customer segment with ID `{segment_id}` not found.")])


def unrecognized_field(name: str, line: int, character: int) -> SquareError:
    """Seeds: ``The field named '{field_name}' is unrecognized (line 4, character 9)``."""
    return SquareError(
        400,
        [error("BAD_REQUEST", f"The field named '{name}' is unrecognized (line {line}, character {character})",
               field=name)],
    )


def limit_error(value: int, low: int, high: int, field: str = "limit") -> SquareError:
    if value < low:
        return SquareError(
            400, [error("VALUE_TOO_LOW", f"`{field}` must be greater than or equal to {low}", field=field)]
        )
    return SquareError(400, [error("VALUE_TOO_HIGH", f"`{field}` must be less than or equal to {high}", field=field)])


def invalid_cursor() -> SquareError:
    return SquareError(400, [error("INVALID_CURSOR", "The provided cursor is invalid.", field="cursor")])


def unauthorized_missing() -> SquareError:
    return SquareError(
        401,
        [error(
            "UNAUTHORIZED",
            "Your request did not include an `Authorization` http header with an access token. The header value "
            "is expected to be of the format \"Bearer TOKEN\" (without quotation marks), where TOKEN is to be "
            "replaced with your access token (e.g. \"Bearer ABC123def456GHI789jkl0\"). For more information, see "
            "https://developer.squareup.com/docs/build-basics/access-tokens. If you are seeing this error message "
            "while using one of our officially supported SDKs, please report this to developers@squareup.com.",
            category=AUTHENTICATION,
        )],
    )


def unauthorized_invalid() -> SquareError:
    return SquareError(
        401, [error("UNAUTHORIZED", "This request could not be authorized.", category=AUTHENTICATION)]
    )


def events_need_personal_token() -> SquareError:
    """The Events API takes personal access tokens only (UNCONFIRMED status/code; the rule is documented)."""
    return SquareError(
        401, [error("UNAUTHORIZED", "The Events API requires a personal access token. OAuth access tokens are not "
                    "accepted.", category=AUTHENTICATION)]
    )


def token_revoked() -> SquareError:
    return SquareError(
        401, [error("ACCESS_TOKEN_REVOKED", "The access token has been revoked.", category=AUTHENTICATION)]
    )


def rate_limited(retry_after: float | None) -> SquareError:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {}
    return SquareError(
        429, [error("RATE_LIMITED", "Rate limit exceeded. Please try again later.", category=RATE_LIMIT)], headers
    )


def internal_error() -> SquareError:
    return SquareError(500, [error("INTERNAL_SERVER_ERROR", "An internal error has occurred, and the API was "
                                   "unable to service your request.", category=API_ERROR)])


def service_unavailable() -> SquareError:
    return SquareError(503, [error("SERVICE_UNAVAILABLE", "Service unavailable. Please try again later.",
                                   category=API_ERROR)])


def token_expired(code: str = "ACCESS_TOKEN_EXPIRED") -> SquareError:
    """An expired OAuth access token (UNCONFIRMED: 401; the code is knob ``expired_token_code``)."""
    return SquareError(401, [error(code, "The access token has expired.", category=AUTHENTICATION)])


def insufficient_scopes(scopes: list[str], status: int = 403) -> SquareError:
    """An OAuth token without a permission the endpoint needs (UNCONFIRMED status: 403)."""
    return SquareError(status, [error(
        "INSUFFICIENT_SCOPES", "The merchant has not given your application sufficient permissions to do that. The "
        f"merchant must authorize your application for the following scopes: {', '.join(scopes)}",
        category=AUTHENTICATION)])


def webhooks_need_application_token() -> SquareError:
    """The Webhook Subscriptions API takes the application's personal access token only (documented; the status and
    code are UNCONFIRMED: 401 INSUFFICIENT_SCOPES, with the forum's wording)."""
    return SquareError(401, [error(
        "INSUFFICIENT_SCOPES", "Webhook subscriptions belong to the application: use its personal access token. The "
        "merchant must authorize your application for the following scopes: DEVELOPER_APPLICATION_WEBHOOKS_READ, "
        "DEVELOPER_APPLICATION_WEBHOOKS_WRITE", category=AUTHENTICATION)])


def invalid_grant(detail: str, status: int, code: str) -> SquareError:
    """ObtainToken's answer to a bad code or refresh token (UNCONFIRMED; knobs ``invalid_grant_status/code``)."""
    category = AUTHENTICATION if status in (401, 403) else INVALID_REQUEST
    return SquareError(status, [error(code, detail, category=category)])


def invalid_client(detail: str) -> SquareError:
    """A wrong client_id or client secret (ObtainToken, RevokeToken): 401 UNAUTHORIZED (UNCONFIRMED)."""
    return SquareError(401, [error("UNAUTHORIZED", detail, category=AUTHENTICATION)])


def missing_parameter(field: str) -> SquareError:
    return SquareError(400, [error("MISSING_REQUIRED_PARAMETER", f"Missing required parameter `{field}`.",
                                   field=field)])


def not_found(detail: str) -> SquareError:
    return SquareError(404, [error("NOT_FOUND", detail)])
