"""OAuth API handlers (FACTS-2 B): the authorize page (the emulator plays the seller), ObtainToken,
RetrieveTokenStatus and RevokeToken. These paths are outside ``/v2``: each handler authenticates on its own."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from yarl import URL

from . import clock, errors
from .emulator import Emulator, bearer_token
from .errors import bad_request
from .keys import EMULATOR, json_response
from .oauth import DEFAULT_SCOPES, FULL_SCOPES
from .validation import parse_json, reject_unknown

_OBTAIN_FIELDS = frozenset(("client_id", "client_secret", "code", "redirect_uri", "grant_type", "refresh_token",
                            "migration_token", "scopes", "short_lived", "code_verifier"))
_REVOKE_FIELDS = frozenset(("client_id", "access_token", "merchant_id", "revoke_only_access_token"))


def _page(status: int, message: str) -> web.Response:
    """Square shows an HTML error page (not JSON) when the authorize URL itself is wrong."""
    return web.Response(status=status, text=f"<html><body><h1>OAuth error</h1><p>{message}</p></body></html>",
                        content_type="text/html")


def _redirect_base(emu: Emulator, given: str | None) -> str | None:
    """The registered redirect URL; ``redirect_uri`` must match it exactly when one is registered."""
    registered = emu.oauth_redirect_url
    if given and registered and given != registered:
        return None
    return given or registered


def _decision(emu: Emulator, query: Any) -> tuple[str, bool]:
    """Who answers the permission page: the emulator-only query parameters ``emulator_merchant_id`` /
    ``emulator_decision=approve|deny``, else the next queued admin approval, else the first seller approving."""
    queued: tuple[str | None, bool] = emu.approvals.pop(0) if emu.approvals else (None, True)
    merchant_id = query.get("emulator_merchant_id") or queued[0] or next(iter(emu.merchants))
    approve = queued[1] if "emulator_decision" not in query else query["emulator_decision"] != "deny"
    return str(merchant_id), approve


async def authorize(request: web.Request) -> web.StreamResponse:
    """``GET /oauth2/authorize``: the seller's answer, as a 302 to the redirect URL (``code``, ``response_type=code``
    and ``state``; or ``error=access_denied&error_description=user_denied``)."""
    emu = request.app[EMULATOR]
    q = request.query
    if q.get("client_id") != emu.application_id:
        return _page(400, "Unknown or missing client_id.")
    base = _redirect_base(emu, q.get("redirect_uri"))
    if base is None:
        return _page(400, "The redirect_uri does not match the application's registered redirect URL."
                     if q.get("redirect_uri") else "The application has no redirect URL.")
    merchant_id, approve = _decision(emu, q)
    params: dict[str, str]
    if approve:
        scopes = q.get("scope", "").replace(",", " ").split() or list(DEFAULT_SCOPES)
        emu.onboard(merchant_id)
        code = emu.oauth.new_code(merchant_id, scopes, q.get("redirect_uri"), q.get("code_challenge"),
                                  q.get("code_challenge_method"))
        params = {"code": code, "response_type": "code"}
    else:
        params = {"error": "access_denied", "error_description": "user_denied"}
    if "state" in q:
        params["state"] = q["state"]
    raise web.HTTPFound(str(URL(base).update_query(params)))


def _string(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise errors.missing_parameter(name)
        return None
    if not isinstance(value, str):
        raise bad_request(f"`{name}` must be a string.", name, "EXPECTED_STRING")
    return value


def _scopes(body: dict[str, Any]) -> list[str] | None:
    scopes = body.get("scopes")
    if scopes is not None and (not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes)):
        raise bad_request("`scopes` must be a list of strings.", "scopes", "EXPECTED_ARRAY")
    return scopes


async def obtain_token(request: web.Request) -> web.Response:
    """``POST /oauth2/token`` (no auth header): grant types ``authorization_code`` and ``refresh_token``."""
    emu = request.app[EMULATOR]
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, _OBTAIN_FIELDS, raw)
    client_id = _string(body, "client_id", required=True)
    grant_type = _string(body, "grant_type", required=True)
    if client_id != emu.application_id:
        raise errors.invalid_client("Unknown client_id.")
    secret = _string(body, "client_secret")
    if secret is not None and secret != emu.application_secret:
        raise errors.invalid_client("Invalid client_secret.")
    short_lived = bool(body.get("short_lived") or False)
    if grant_type == "authorization_code":
        issued = emu.oauth.redeem_code(_string(body, "code", required=True) or "",
                                       redirect_uri=_string(body, "redirect_uri"),
                                       verifier=_string(body, "code_verifier"), has_secret=secret is not None,
                                       short_lived=short_lived)
        emu.authorized(issued.access.merchant_id)
    elif grant_type == "refresh_token":
        issued = emu.oauth.refresh_grant(_string(body, "refresh_token", required=True) or "",
                                         has_secret=secret is not None, scopes=_scopes(body), short_lived=short_lived)
    elif grant_type == "migration_token":
        raise bad_request("The emulator does not support migration tokens.", "grant_type", "INVALID_VALUE")
    else:
        raise bad_request(f"Unsupported grant_type `{grant_type}`.", "grant_type", "INVALID_VALUE")
    return json_response(issued.to_json())


async def token_status(request: web.Request) -> web.Response:
    """``POST /oauth2/token/status`` with ``Authorization: Bearer TOKEN``. An invalid, expired or revoked token is
    401 ``UNAUTHORIZED``; a token that never expires (personal, static) has no ``expires_at``."""
    emu = request.app[EMULATOR]
    token = bearer_token(request)
    out: dict[str, Any] = {"client_id": emu.application_id}
    if emu.application_token is not None and token == emu.application_token:
        return json_response({"scopes": list(FULL_SCOPES)} | out)
    merchant_id = emu.tokens.get(token)
    if merchant_id is not None and not emu.merchants[merchant_id].revoked:
        return json_response({"scopes": list(FULL_SCOPES)} | out | {"merchant_id": merchant_id})
    try:
        access = emu.live_access_token(token)
    except errors.SquareError:
        raise errors.unauthorized_invalid() from None
    return json_response({"scopes": list(access.scopes), "expires_at": clock.rfc3339_s(access.expires_at)} | out
                         | {"merchant_id": access.merchant_id})


def _check_client(request: web.Request, emu: Emulator) -> None:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Client" or secret.strip() != emu.application_secret:
        raise errors.invalid_client("RevokeToken needs the header `Authorization: Client APPLICATION_SECRET`.")


async def revoke_token(request: web.Request) -> web.Response:
    """``POST /oauth2/revoke`` with ``Authorization: Client SECRET``: ``access_token`` XOR ``merchant_id``; without
    ``revoke_only_access_token`` every token of the seller dies and oauth.authorization.revoked fires."""
    emu = request.app[EMULATOR]
    _check_client(request, emu)
    raw = await request.read()
    body = parse_json(raw)
    reject_unknown(body, _REVOKE_FIELDS, raw)
    if _string(body, "client_id", required=True) != emu.application_id:
        raise errors.invalid_client("Unknown client_id.")
    token, merchant_id = _string(body, "access_token"), _string(body, "merchant_id")
    if (token is None) == (merchant_id is None):
        raise bad_request("Exactly one of `access_token` and `merchant_id` is required.", "access_token",
                          "CONFLICTING_PARAMETERS" if token else "MISSING_REQUIRED_PARAMETER")
    only = bool(body.get("revoke_only_access_token") or False)
    if only:
        if token is None:
            raise bad_request("`revoke_only_access_token` needs `access_token`.", "revoke_only_access_token")
        owner = emu.token_owner(token)
        emu.revoke_access_token(token)
        if emu.knobs.revoke_only_access_token_fires_webhook:
            emu.fire_revoked(owner, "APPLICATION", 1)
    else:
        emu.revoke_authorization(emu.token_owner(token) if token else str(merchant_id), "APPLICATION")
    return json_response({"success": True})
