"""The routing table (``emulator/routes.py``): public routes carry Square's operation IDs, and the literal paths
under ``/v2/customers/`` come before ``/v2/customers/{customer_id}`` and win over it."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from emulator import create_app


def _routes(app: web.Application) -> list[tuple[str, str, str | None]]:
    return [(route.method, route.resource.canonical, route.name) for route in app.router.routes()
            if route.resource is not None]


def test_every_public_route_is_named_by_an_operation_id_and_no_admin_route_is() -> None:
    routes = _routes(create_app())
    public = [(m, p, n) for m, p, n in routes if p.startswith(("/v2/", "/oauth2/"))]
    admin = [(m, p, n) for m, p, n in routes if p.startswith("/_emulator/")]
    assert len(public) + len(admin) == len(routes)
    assert all(n and re.fullmatch(r"[A-Z][A-Za-z]+", n) for _, _, n in public), public
    assert all(n is None for _, _, n in admin), admin
    assert len({(m, p) for m, p, _ in routes}) == len(routes)


async def test_literal_customer_paths_come_first_and_win_over_customer_id() -> None:
    app = create_app()
    routes = _routes(app)
    first_item = min(i for i, (_, p, _) in enumerate(routes) if p.startswith("/v2/customers/{customer_id}"))
    literal = [(i, m, p, n) for i, (m, p, n) in enumerate(routes)
               if p.startswith("/v2/customers/") and not p.startswith("/v2/customers/{")]
    assert len(literal) >= 10
    for i, method, path, name in literal:
        assert i < first_item, f"{method} {path} is registered after /v2/customers/{{customer_id}}"
        concrete = re.sub(r"\{[^}]+\}", "X1", path)
        match = await app.router.resolve(make_mocked_request(method, concrete, app=app))
        assert match.route.name == name, (method, concrete)
