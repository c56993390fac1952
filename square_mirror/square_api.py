"""The one Square API client: auth per merchant, pinned version, retries, the shared rate limit.

Endpoint paths, page limits and the API version live here and nowhere else. Retries cover 429, 5xx,
timeouts and connection errors, with exponential backoff and full jitter, honouring Retry-After when Square
sends it. 401/403 are never retried: the merchant is reported unauthorized through ``on_unauthorized``.
Bad answers (HTML error pages, truncated JSON, a 200 carrying ``errors``, oversize bodies) become
:class:`SquareBadResponse` with a clear message instead of reaching the mirror.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import orjson

from square_mirror.errors import SquareBadResponse as SquareBadResponse
from square_mirror.errors import SquareError as SquareError
from square_mirror.errors import SquareInvalidRequest as SquareInvalidRequest
from square_mirror.errors import SquareNotFound as SquareNotFound
from square_mirror.errors import SquareRateLimited as SquareRateLimited
from square_mirror.errors import SquareUnauthorized as SquareUnauthorized
from square_mirror.errors import SquareUnavailable as SquareUnavailable
from square_mirror.logs import get_logger
from square_mirror.metrics import RATE_LIMIT_WAIT_SECONDS, SQUARE_RATE_LIMITED, SQUARE_REQUEST_SECONDS, SQUARE_REQUESTS
from square_mirror.ratelimit import EVENT_SPENDING, RateLimiter, current_spend
from square_mirror.retry import SQUARE_RETRIED
from square_mirror.retry import RetryPolicy as RetryPolicy
from square_mirror.settings import Settings
from square_mirror.timefmt import is_timestamp
from square_mirror.tokens import NoToken, TokenSource

log = get_logger(__name__)

# Endpoints (Square API paths) and page limits.
RETRIEVE_CUSTOMER: Final = "/v2/customers/{customer_id}"
BULK_RETRIEVE_CUSTOMERS: Final = "/v2/customers/bulk-retrieve"
LIST_CUSTOMERS: Final = "/v2/customers"
SEARCH_CUSTOMERS: Final = "/v2/customers/search"
LIST_GROUPS: Final = "/v2/customers/groups"
RETRIEVE_GROUP: Final = "/v2/customers/groups/{group_id}"
LIST_SEGMENTS: Final = "/v2/customers/segments"
RETRIEVE_SEGMENT: Final = "/v2/customers/segments/{segment_id}"
SEARCH_EVENTS: Final = "/v2/events"
ENABLE_EVENTS: Final = "/v2/events/enable"
RETRIEVE_MERCHANT: Final = "/v2/merchants/{merchant_id}"
OBTAIN_TOKEN: Final = "/oauth2/token"  # noqa: S105 (a path, not a password)
RETRIEVE_TOKEN_STATUS: Final = "/oauth2/token/status"  # noqa: S105
REVOKE_TOKEN: Final = "/oauth2/revoke"  # noqa: S105
WEBHOOK_SUBSCRIPTIONS: Final = "/v2/webhooks/subscriptions"  # List (GET) and Create (POST)
LIST_CUSTOM_ATTRIBUTE_DEFINITIONS: Final = "/v2/customers/custom-attribute-definitions"
LIST_CUSTOMER_CUSTOM_ATTRIBUTES: Final = "/v2/customers/{customer_id}/custom-attributes"

CUSTOMERS_PAGE_LIMIT: Final = 100
BULK_RETRIEVE_LIMIT: Final = 100
GROUPS_PAGE_LIMIT: Final = 50
SEGMENTS_PAGE_LIMIT: Final = 50
EVENTS_PAGE_LIMIT: Final = 100
CUSTOM_ATTRIBUTES_PAGE_LIMIT: Final = 100
WEBHOOK_SUBSCRIPTIONS_PAGE_LIMIT: Final = 100
# The scopes the mirror asks a seller for (the authorize URL): customers and their custom attributes, and the
# merchant profile (RetrieveMerchant, ListLocations). Without a scope, Square's default set lacks CUSTOMERS_READ.
OAUTH_SCOPES: Final = ("CUSTOMERS_READ", "MERCHANT_PROFILE_READ")
OAUTH_AUTHORIZE: Final = "/oauth2/authorize"
# The codes of a 401 that a refresh can cure (an expired OAuth token may also come back as plain UNAUTHORIZED:
# UNCONFIRMED, and then the scheduled refresh is what keeps tokens from ever expiring).
TOKEN_EXPIRED_CODES: Final = frozenset({"ACCESS_TOKEN_EXPIRED"})  # both custom attribute lists default to 20

MAX_RESPONSE_BYTES: Final = 32 * 1024 * 1024
RETRY_AFTER_CAP_SECONDS: Final = 60.0


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(seconds, RETRY_AFTER_CAP_SECONDS))


UnauthorizedHook = Callable[[str, str], Awaitable[None]]


def authorize_url(base_url: str, application_id: str, state: str, redirect_uri: str | None = None) -> str:
    """The page a seller opens to connect: Square's authorize URL on ``base_url``'s host (the emulator's, in
    tests), asking for :data:`OAUTH_SCOPES`, with a fresh login (``session=False``) and the CSRF ``state``."""
    from urllib.parse import quote_plus, urlencode

    params = {"client_id": application_id, "scope": " ".join(OAUTH_SCOPES), "session": "False", "state": state}
    if redirect_uri:
        params["redirect_uri"] = redirect_uri
    return f"{base_url.rstrip('/')}{OAUTH_AUTHORIZE}?{urlencode(params, quote_via=quote_plus)}"


class SquareClient:
    def __init__(
        self,
        *,
        base_url: str,
        version: str,
        tokens: TokenSource,
        rate_limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 15.0,
        session: aiohttp.ClientSession | None = None,
        on_unauthorized: UnauthorizedHook | None = None,
        max_connections: int = 200,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.version = version
        self.tokens = tokens
        self.rate_limiter = rate_limiter
        self.retry = retry or RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self.on_unauthorized = on_unauthorized
        # Called on ACCESS_TOKEN_EXPIRED with the merchant ID: refreshes its token (square_mirror.credentials), after
        # which the request is tried once more with the token the TokenSource then holds.
        self.on_token_expired: Callable[[str], Awaitable[None]] | None = None
        self.requests_made = 0

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> SquareClient:
        return cls(
            base_url=settings.square_base_url,
            version=settings.square_version,
            tokens=kw.pop("tokens", None) or TokenSource.from_settings(settings),
            **kw,
        )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                json_serialize=lambda v: orjson.dumps(v).decode(),
            )
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> SquareClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the one request path ------------------------------------------------------------------------------

    async def request(
        self,
        merchant_id: str,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
        token: str | None = None,
        report_unauthorized: bool = True,
        authorization: str | None = None,
    ) -> dict[str, Any]:
        """One Square call with retries; returns the JSON object or raises a :class:`SquareError`.

        ``report_unauthorized=False`` for APIs whose refusal says nothing about the seller's token for the
        Customers API (the Events API takes personal access tokens only): the merchant is not marked unauthorized.
        """
        headers = {"Square-Version": self.version, "Accept": "application/json"}
        if authorization is None:
            headers["Authorization"] = f"Bearer {token or self._token(merchant_id, endpoint)}"
        elif authorization:  # "": no Authorization header at all (ObtainToken)
            headers["Authorization"] = authorization
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        url = self.base_url + path
        started = time.monotonic()
        attempt = 0
        expiry_hook = self.on_token_expired if authorization is None and token is None else None
        while True:
            if self.rate_limiter is not None and merchant_id:  # OAuth calls are the application's, not a seller's
                spend = current_spend()
                kind = EVENT_SPENDING if spend is None else spend.kind
                waited = await self.rate_limiter.acquire(merchant_id, kind=kind)
                if waited:
                    RATE_LIMIT_WAIT_SECONDS.inc(waited)
            try:
                return await self._attempt(merchant_id, method, url, endpoint, headers, params, data,
                                           report_unauthorized and expiry_hook is None)
            except SquareUnauthorized as exc:
                if not await self._cured(exc, merchant_id, expiry_hook, report_unauthorized):
                    raise
                expiry_hook = None  # cured once: another 401 is reported and raised
                headers["Authorization"] = f"Bearer {self._token(merchant_id, endpoint)}"
            except SQUARE_RETRIED as exc:
                attempt += 1
                delay = self.retry.backoff(attempt)
                if isinstance(exc, SquareRateLimited) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if attempt >= self.retry.attempts or time.monotonic() - started + delay > self.retry.deadline:
                    raise
                log.info("square_retry", endpoint=endpoint, attempt=attempt, status=exc.status,
                         delay=round(delay, 3), error=type(exc).__name__)
                await asyncio.sleep(delay)

    async def _cured(self, exc: SquareUnauthorized, merchant_id: str,
                     expiry_hook: Callable[[str], Awaitable[None]] | None, report: bool) -> bool:
        """An expired token with a refresh at hand: refresh it (True: try again). Anything else is reported as the
        merchant's unauthorized state (once, here, when the attempt held the report back) and stays an error."""
        if expiry_hook is not None and TOKEN_EXPIRED_CODES.intersection(exc.codes):
            await expiry_hook(merchant_id)
            return True
        if expiry_hook is not None and report and self.on_unauthorized is not None:
            await self.on_unauthorized(merchant_id, str(exc))
        return False

    def _token(self, merchant_id: str, endpoint: str) -> str:
        try:
            return self.tokens.token_for(merchant_id)
        except NoToken as exc:
            raise SquareUnauthorized(str(exc), merchant_id=merchant_id, endpoint=endpoint) from None

    async def _attempt(
        self,
        merchant_id: str,
        method: str,
        url: str,
        endpoint: str,
        headers: Mapping[str, str],
        params: Mapping[str, str | int] | None,
        data: bytes | None,
        report_unauthorized: bool = True,
    ) -> dict[str, Any]:
        begun = time.monotonic()
        self.requests_made += 1
        spend = current_spend()
        if spend is not None:
            spend.requests += 1
        try:
            async with self._http().request(method, url, headers=headers, params=params, data=data) as response:
                status = response.status
                raw = await _read_limited(response, endpoint)
                content_type = response.headers.get("Content-Type", "")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError) as exc:
            SQUARE_REQUESTS.labels(endpoint, "error").inc()
            raise SquareUnavailable(f"{endpoint}: {type(exc).__name__}", endpoint=endpoint) from None
        finally:
            SQUARE_REQUEST_SECONDS.labels(endpoint).observe(time.monotonic() - begun)
        SQUARE_REQUESTS.labels(endpoint, str(status)).inc()
        payload = _decode(raw, content_type)
        errors = _errors_of(payload)
        if status == 429:
            SQUARE_RATE_LIMITED.labels(endpoint).inc()
            raise SquareRateLimited(f"{endpoint}: 429 RATE_LIMITED", status=status, errors=errors, endpoint=endpoint,
                                    retry_after=retry_after)
        if status in (401, 403):
            message = f"{endpoint}: {status} {', '.join(str(e.get('code')) for e in errors) or 'unauthorized'}"
            if self.on_unauthorized is not None and report_unauthorized:
                await self.on_unauthorized(merchant_id, message)
            raise SquareUnauthorized(message, merchant_id=merchant_id, status=status, errors=errors, endpoint=endpoint)
        if status >= 500:
            raise SquareUnavailable(f"{endpoint}: HTTP {status}", status=status, errors=errors, endpoint=endpoint)
        if status == 404:
            raise SquareNotFound(f"{endpoint}: 404 NOT_FOUND", status=status, errors=errors, endpoint=endpoint)
        if status >= 400:
            codes = ", ".join(str(e.get("code")) for e in errors) or f"HTTP {status}"
            raise SquareInvalidRequest(f"{endpoint}: {status} {codes}", status=status, errors=errors,
                                       endpoint=endpoint)
        if payload is None:
            raise SquareBadResponse(
                f"{endpoint}: HTTP {status} with a body that is not a JSON object ({content_type or 'no type'})",
                status=status, endpoint=endpoint)
        if errors and endpoint not in _BULK_ENDPOINTS:
            raise SquareBadResponse(f"{endpoint}: HTTP {status} carrying errors", status=status, errors=errors,
                                    endpoint=endpoint)
        return payload

    # -- Customers ----------------------------------------------------------------------------------------

    async def retrieve_customer(self, merchant_id: str, customer_id: str) -> dict[str, Any] | None:
        """The profile for this ID (for a merged-away ID Square answers with the merge target), or None on 404."""
        try:
            payload = await self.request(merchant_id, "GET", RETRIEVE_CUSTOMER.format(customer_id=_quote(customer_id)),
                                         endpoint="RetrieveCustomer")
        except SquareNotFound:
            return None
        customer = payload.get("customer")
        if not isinstance(customer, dict) or not isinstance(customer.get("id"), str):
            raise SquareBadResponse("RetrieveCustomer: response has no customer object", endpoint="RetrieveCustomer")
        check_customer(customer, "RetrieveCustomer")
        return customer

    async def bulk_retrieve_customers(
        self, merchant_id: str, customer_ids: list[str]
    ) -> dict[str, dict[str, Any] | None]:
        """requested ID -> profile, or None where Square answered NOT_FOUND for that item."""
        if not 1 <= len(customer_ids) <= BULK_RETRIEVE_LIMIT:
            raise ValueError(f"BulkRetrieveCustomers takes 1 to {BULK_RETRIEVE_LIMIT} IDs")
        payload = await self.request(merchant_id, "POST", BULK_RETRIEVE_CUSTOMERS,
                                     body={"customer_ids": customer_ids}, endpoint="BulkRetrieveCustomers")
        responses = payload.get("responses")
        if not isinstance(responses, dict):
            if payload.get("errors"):
                raise SquareBadResponse("BulkRetrieveCustomers: request-level errors", errors=_errors_of(payload),
                                        endpoint="BulkRetrieveCustomers")
            raise SquareBadResponse("BulkRetrieveCustomers: no responses map", endpoint="BulkRetrieveCustomers")
        result: dict[str, dict[str, Any] | None] = {}
        for requested in customer_ids:
            item = responses.get(requested)
            if not isinstance(item, dict):
                raise SquareBadResponse(f"BulkRetrieveCustomers: no result for a requested ID ({requested})",
                                        endpoint="BulkRetrieveCustomers")
            customer = item.get("customer")
            if isinstance(customer, dict) and isinstance(customer.get("id"), str):
                result[requested] = check_customer(customer, "BulkRetrieveCustomers")
                continue
            codes = [str(e.get("code")) for e in _errors_of(item) or []]
            if "NOT_FOUND" in codes:
                result[requested] = None
            else:
                raise SquareBadResponse(f"BulkRetrieveCustomers: item error {codes or 'without customer'}",
                                        errors=_errors_of(item), endpoint="BulkRetrieveCustomers")
        return result

    async def list_customers(self, merchant_id: str, *, cursor: str | None = None, limit: int = CUSTOMERS_PAGE_LIMIT,
                             sort_field: str = "CREATED_AT", sort_order: str = "ASC") -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit, "sort_field": sort_field, "sort_order": sort_order}
        if cursor:
            params["cursor"] = cursor
        payload = await self.request(merchant_id, "GET", LIST_CUSTOMERS, params=params, endpoint="ListCustomers")
        return check_page(payload, "customers", check_listed_customer, "ListCustomers")

    async def search_customers(self, merchant_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        payload = await self.request(merchant_id, "POST", SEARCH_CUSTOMERS, body=body, endpoint="SearchCustomers")
        return check_page(payload, "customers", check_listed_customer, "SearchCustomers")

    # -- Groups and segments ------------------------------------------------------------------------------

    async def list_groups(self, merchant_id: str, *, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": GROUPS_PAGE_LIMIT}
        if cursor:
            params["cursor"] = cursor
        payload = await self.request(merchant_id, "GET", LIST_GROUPS, params=params, endpoint="ListCustomerGroups")
        return check_page(payload, "groups", check_definition, "ListCustomerGroups")

    async def retrieve_group(self, merchant_id: str, group_id: str) -> dict[str, Any] | None:
        try:
            payload = await self.request(merchant_id, "GET", RETRIEVE_GROUP.format(group_id=_quote(group_id)),
                                         endpoint="RetrieveCustomerGroup")
        except SquareNotFound:
            return None
        group = payload.get("group")
        return check_definition(group, "RetrieveCustomerGroup") if isinstance(group, dict) else None

    async def list_segments(self, merchant_id: str, *, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": SEGMENTS_PAGE_LIMIT}
        if cursor:
            params["cursor"] = cursor
        payload = await self.request(merchant_id, "GET", LIST_SEGMENTS, params=params,
                                     endpoint="ListCustomerSegments")
        return check_page(payload, "segments", check_definition, "ListCustomerSegments")

    async def retrieve_segment(self, merchant_id: str, segment_id: str) -> dict[str, Any] | None:
        try:
            payload = await self.request(merchant_id, "GET", RETRIEVE_SEGMENT.format(segment_id=_quote(segment_id)),
                                         endpoint="RetrieveCustomerSegment")
        except SquareNotFound:
            return None
        segment = payload.get("segment")
        return check_definition(segment, "RetrieveCustomerSegment") if isinstance(segment, dict) else None

    # -- Customer custom attributes ------------------------------------------------------------------------

    async def list_custom_attribute_definitions(self, merchant_id: str, *, cursor: str | None = None) -> dict[str, Any]:
        """A page of the definitions this application can see (its own, other applications' visible ones, and the
        seller's Dashboard fields)."""
        params: dict[str, str | int] = {"limit": CUSTOM_ATTRIBUTES_PAGE_LIMIT}
        if cursor:
            params["cursor"] = cursor
        payload = await self.request(merchant_id, "GET", LIST_CUSTOM_ATTRIBUTE_DEFINITIONS, params=params,
                                     endpoint="ListCustomerCustomAttributeDefinitions")
        return check_page(payload, "custom_attribute_definitions", check_custom_attribute,
                          "ListCustomerCustomAttributeDefinitions")

    async def list_customer_custom_attributes(self, merchant_id: str, customer_id: str, *,
                                              cursor: str | None = None) -> dict[str, Any]:
        """A page of one customer's values; SquareNotFound when the customer is gone."""
        params: dict[str, str | int] = {"limit": CUSTOM_ATTRIBUTES_PAGE_LIMIT}
        if cursor:
            params["cursor"] = cursor
        payload = await self.request(
            merchant_id, "GET", LIST_CUSTOMER_CUSTOM_ATTRIBUTES.format(customer_id=_quote(customer_id)),
            params=params, endpoint="ListCustomerCustomAttributes")
        return check_page(payload, "custom_attributes", check_custom_attribute, "ListCustomerCustomAttributes")

    # -- OAuth (the application's, not a seller's: no rate limit of a seller's, no unauthorized report) ----------

    async def obtain_token(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """ObtainToken (``authorization_code`` or ``refresh_token``): no Authorization header; the body carries the
        client ID and, for the code flow, the client secret."""
        payload = await self.request("", "POST", OBTAIN_TOKEN, body=body, endpoint="ObtainToken", authorization="",
                                     report_unauthorized=False)
        if not isinstance(payload.get("access_token"), str) or not isinstance(payload.get("merchant_id"), str):
            raise SquareBadResponse("ObtainToken: no access_token or merchant_id", endpoint="ObtainToken")
        return payload

    async def retrieve_token_status(self, token: str) -> dict[str, Any]:
        return await self.request("", "POST", RETRIEVE_TOKEN_STATUS, endpoint="RetrieveTokenStatus", token=token,
                                  report_unauthorized=False)

    async def revoke_token(self, client_secret: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("", "POST", REVOKE_TOKEN, body=body, endpoint="RevokeToken",
                                  authorization=f"Client {client_secret}", report_unauthorized=False)

    # -- Webhook subscriptions (the application's: its personal access token only, never a seller's) -------------

    async def list_webhook_subscriptions(self, application_token: str) -> list[dict[str, Any]]:
        """Every subscription of the application, disabled ones included, oldest first (all pages)."""
        subscriptions: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"include_disabled": "true", "limit": WEBHOOK_SUBSCRIPTIONS_PAGE_LIMIT}
            if cursor:
                params["cursor"] = cursor
            payload = await self.request("", "GET", WEBHOOK_SUBSCRIPTIONS, params=params,
                                         endpoint="ListWebhookSubscriptions", token=application_token,
                                         report_unauthorized=False)
            page = payload.get("subscriptions") or []
            if not isinstance(page, list) or not all(isinstance(s, dict) for s in page):
                raise _malformed("ListWebhookSubscriptions", "subscriptions is not a list of objects")
            subscriptions.extend(page)
            cursor = payload.get("cursor")
            if not cursor or not isinstance(cursor, str):
                return subscriptions

    async def create_webhook_subscription(self, application_token: str, subscription: Mapping[str, Any],
                                          idempotency_key: str) -> dict[str, Any]:
        """CreateWebhookSubscription; the answer's subscription carries its ``signature_key``."""
        payload = await self.request("", "POST", WEBHOOK_SUBSCRIPTIONS, endpoint="CreateWebhookSubscription",
                                     body={"idempotency_key": idempotency_key, "subscription": dict(subscription)},
                                     token=application_token, report_unauthorized=False)
        created = payload.get("subscription")
        if not isinstance(created, dict) or not isinstance(created.get("id"), str):
            raise _malformed("CreateWebhookSubscription", "no subscription object")
        return created

    # -- Events and merchants -----------------------------------------------------------------------------

    async def search_events(self, merchant_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request(merchant_id, "POST", SEARCH_EVENTS, body=body, endpoint="SearchEvents",
                                  token=self._events_token(merchant_id, "SearchEvents"), report_unauthorized=False)

    async def enable_events(self, merchant_id: str) -> None:
        """EnableEvents: from now on this seller's events are searchable (Square keeps them disabled by default)."""
        await self.request(merchant_id, "PUT", ENABLE_EVENTS, endpoint="EnableEvents",
                           token=self._events_token(merchant_id, "EnableEvents"), report_unauthorized=False)

    def _events_token(self, merchant_id: str, endpoint: str) -> str:
        try:
            return self.tokens.events_token_for(merchant_id)
        except NoToken as exc:
            raise SquareUnauthorized(str(exc), merchant_id=merchant_id, endpoint=endpoint) from None

    async def retrieve_own_merchant_id(self, token: str) -> str:
        """The merchant a token belongs to (RetrieveMerchant with the ID ``me``)."""
        payload = await self.request("me", "GET", RETRIEVE_MERCHANT.format(merchant_id="me"),
                                     endpoint="RetrieveMerchant", token=token)
        merchant = payload.get("merchant")
        if not isinstance(merchant, dict) or not isinstance(merchant.get("id"), str):
            raise SquareBadResponse("RetrieveMerchant: no merchant object", endpoint="RetrieveMerchant")
        merchant_id: str = merchant["id"]
        return merchant_id


_BULK_ENDPOINTS: Final = frozenset({"BulkRetrieveCustomers"})

# The shape the mirror relies on, checked where answers enter the house, so that a misbehaving Square (or a proxy
# in between) is one clear SquareBadResponse instead of a database error or, worse, a row with garbage in it.
_CUSTOMER_STRINGS: Final = ("given_name", "family_name", "nickname", "company_name", "email_address", "phone_number",
                            "birthday", "reference_id", "note", "creation_source")
_CUSTOMER_TIMES: Final = ("created_at", "updated_at")
_CUSTOMER_OBJECTS: Final = ("address", "tax_ids", "preferences")
_CUSTOMER_ID_LISTS: Final = ("group_ids", "segment_ids")


def _malformed(endpoint: str, what: str) -> SquareBadResponse:
    return SquareBadResponse(f"{endpoint}: malformed answer ({what})", endpoint=endpoint)


def check_customer(doc: Any, endpoint: str) -> dict[str, Any]:
    """``doc`` if it is a Customer object whose fields have the types Square documents, else SquareBadResponse.

    ``null`` is accepted wherever a field may be absent; unknown fields are left alone (Square adds fields).
    """
    if not isinstance(doc, dict):
        raise _malformed(endpoint, "a customer that is not an object")
    cid = doc.get("id")
    if not isinstance(cid, str) or not cid.strip() or len(cid) > 192:
        raise _malformed(endpoint, "a customer without a valid id")
    version = doc.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise _malformed(endpoint, f"customer {cid}: version is not an integer")
    _check_field_types(doc, cid, endpoint)
    unsubscribed = (doc.get("preferences") or {}).get("email_unsubscribed")
    if unsubscribed is not None and not isinstance(unsubscribed, bool):
        raise _malformed(endpoint, f"customer {cid}: preferences.email_unsubscribed is not a boolean")
    for key in _CUSTOMER_ID_LISTS:
        ids = doc.get(key)
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(x, str) for x in ids)):
            raise _malformed(endpoint, f"customer {cid}: {key} is not a list of IDs")
    return doc


def _check_field_types(doc: dict[str, Any], cid: str, endpoint: str) -> None:
    for key in _CUSTOMER_STRINGS:
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise _malformed(endpoint, f"customer {cid}: {key} is not a string")
    for key in _CUSTOMER_TIMES:
        if doc.get(key) is not None and not is_timestamp(doc[key]):
            raise _malformed(endpoint, f"customer {cid}: {key} is not a timestamp")
    for key in _CUSTOMER_OBJECTS:
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise _malformed(endpoint, f"customer {cid}: {key} is not an object")


def check_listed_customer(doc: Any, endpoint: str) -> dict[str, Any]:
    """A customer of a list or search page: also needs ``created_at``, by which the backfill partitions and
    pages (Square always sends it there)."""
    customer = check_customer(doc, endpoint)
    if customer.get("created_at") is None:
        raise _malformed(endpoint, f"customer {customer['id']}: no created_at")
    return customer


def check_definition(doc: Any, endpoint: str) -> dict[str, Any]:
    """A customer group or segment: an object with a string ``id`` and, when present, a string ``name``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"].strip():
        raise _malformed(endpoint, "a group or segment without a valid id")
    if doc.get("name") is not None and not isinstance(doc["name"], str):
        raise _malformed(endpoint, f"{doc['id']}: name is not a string")
    for key in _CUSTOMER_TIMES:
        if doc.get(key) is not None and not is_timestamp(doc[key]):
            raise _malformed(endpoint, f"{doc['id']}: {key} is not a timestamp")
    return doc


def check_custom_attribute(doc: Any, endpoint: str) -> dict[str, Any]:
    """A custom attribute value or definition: a non-empty string ``key``, an integer ``version`` and Square's
    timestamps when present."""
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str) or not doc["key"].strip():
        raise _malformed(endpoint, "a custom attribute without a valid key")
    version = doc.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise _malformed(endpoint, f"{doc['key']}: version is not an integer")
    for key in _CUSTOMER_TIMES:
        if doc.get(key) is not None and not is_timestamp(doc[key]):
            raise _malformed(endpoint, f"{doc['key']}: {key} is not a timestamp")
    return doc


def check_page(payload: dict[str, Any], key: str, check: Callable[[Any, str], dict[str, Any]],
               endpoint: str) -> dict[str, Any]:
    """A list/search page: ``key`` absent (Square's empty page is ``{}``) or a list of valid items, and a string
    cursor if any."""
    items = payload.get(key)
    if items is not None:
        if not isinstance(items, list):
            raise _malformed(endpoint, f"{key} is not a list")
        for item in items:
            check(item, endpoint)
    cursor = payload.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise _malformed(endpoint, "cursor is not a string")
    return payload


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


async def _read_limited(response: aiohttp.ClientResponse, endpoint: str) -> bytes:
    declared = response.content_length
    if declared is not None and declared > MAX_RESPONSE_BYTES:
        raise SquareBadResponse(f"{endpoint}: response of {declared} bytes exceeds the {MAX_RESPONSE_BYTES} byte "
                                "limit", status=response.status, endpoint=endpoint)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise SquareBadResponse(f"{endpoint}: response exceeds the {MAX_RESPONSE_BYTES} byte limit",
                                    status=response.status, endpoint=endpoint)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, content_type: str) -> dict[str, Any] | None:
    if not raw:
        return None
    if "json" not in content_type.lower():
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _errors_of(payload: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not payload:
        return []
    errors = payload.get("errors")
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, dict)]
