"""The aiohttp application: the Square middleware (auth, faults, error envelope) and ``create_app``.

The ``Emulator`` (``emulator.py``) owns all state; handlers reach it through ``request.app[EMULATOR]``
(``keys.py``). Public routes authenticate a Bearer token to one seller or the application; ``/_emulator/``
admin routes need no token.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from .config import EmulatorConfig
from .emulator import Emulator, load_snapshot_if_exists, save_snapshot
from .errors import SquareError
from .keys import EMULATOR, MERCHANT_KEY, PRINCIPAL_KEY, json_response
from .routes import setup_routes
from .traffic import APPLICATION, OAUTH2, UNAUTHENTICATED, UNMATCHED

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@web.middleware
async def square_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth + faults for /v2, and Square's error envelope for every SquareError; every public request counted
    (``traffic.py``) under the seller it authenticated as, with the status it was answered."""
    if not request.path.startswith(("/v2/", "/oauth2/")):
        return await _serve(request, handler)  # admin calls are not Square traffic
    status = 500
    try:
        response = await _serve(request, handler)
        status = response.status
        return response
    except web.HTTPException as exc:  # the OAuth authorize page's redirect
        status = exc.status
        raise
    finally:
        request.app[EMULATOR].requests.add(_traffic_key(request), _operation(request) or UNMATCHED, status)


def _operation(request: web.Request) -> str | None:
    route = request.match_info.route
    return route.name if route is not None else None


def _traffic_key(request: web.Request) -> str:
    if request.path.startswith("/oauth2/"):
        return OAUTH2
    principal = request.get(PRINCIPAL_KEY)
    if principal is None:
        return UNAUTHENTICATED
    return principal.merchant.merchant_id if principal.merchant is not None else APPLICATION


async def _serve(request: web.Request, handler: Handler) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    try:
        version = request.headers.get("Square-Version")
        if request.path.startswith("/v2/"):
            if version is not None and not _VERSION.match(version):
                raise SquareError(400, [{"code": "INVALID_SQUARE_VERSION_FORMAT", "detail": "Invalid Square-Version "
                                         f"format `{version}`, expected YYYY-MM-DD.", "field": "Square-Version",
                                         "category": "INVALID_REQUEST_ERROR"}])
            operation = _operation(request) or request.path
            principal = emulator.authenticate(request, operation)
            request[PRINCIPAL_KEY] = principal
            if principal.merchant is not None:
                request[MERCHANT_KEY] = principal.merchant
            bucket = principal.merchant.merchant_id if principal.merchant is not None else APPLICATION
            await emulator.faults.before(bucket, operation)
        response = await handler(request)
        if version is not None and request.path.startswith("/v2/"):
            response.headers["Square-Version"] = version  # Square echoes the version it used
        return response
    except SquareError as exc:
        return json_response(exc.body(), exc.status, exc.headers)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        # Square answers unknown endpoints with its JSON envelope, not an HTML page.
        detail = f"API endpoint for URL path `{request.path}` and HTTP method `{request.method}` is not found."
        return json_response({"errors": [{"code": "NOT_FOUND", "detail": detail,
                                          "category": "INVALID_REQUEST_ERROR"}]}, exc.status)


async def webhook_deliveries(app: web.Application) -> AsyncIterator[None]:
    """Deliveries still in flight are cancelled, and their HTTP session closed, when the app stops."""
    yield
    await app[EMULATOR].webhooks.close()


async def snapshot_file(app: web.Application) -> AsyncIterator[None]:
    """``EmulatorConfig.snapshot_path`` (``--snapshot``): restored at start if the file exists, saved at stop."""
    emulator = app[EMULATOR]
    path = emulator.config.snapshot_path
    if path:
        load_snapshot_if_exists(emulator, path)
    yield
    if path:
        save_snapshot(emulator, path)


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """Build the emulator application (used by the CLI, ``testing.run_emulator`` and tests)."""
    app = web.Application(middlewares=[square_middleware], client_max_size=16 * 1024 * 1024)
    app[EMULATOR] = Emulator(config or EmulatorConfig())
    setup_routes(app)
    # Cleanup runs in reverse: the snapshot is saved before the deliveries stop.
    app.cleanup_ctx.append(webhook_deliveries)
    app.cleanup_ctx.append(snapshot_file)
    return app
