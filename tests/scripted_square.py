"""A real HTTP server that answers with scripted responses, for exercising clients against bad Square answers."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

Responder = Callable[[web.Request], web.StreamResponse | Awaitable[web.StreamResponse]]


class ScriptedSquare:
    """Answers each request with the next scripted response and records what it was sent."""

    def __init__(self) -> None:
        self.script: list[Responder] = []
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": json.loads(body) if body else None})
        if not self.script:
            return web.json_response({"errors": [{"code": "NOT_SCRIPTED", "category": "API_ERROR"}]}, status=500)
        answer = self.script.pop(0)(request)
        return await answer if inspect.isawaitable(answer) else answer


def json_reply(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Responder:
    return lambda _r: web.json_response(payload, status=status, headers=headers)


def raw_reply(body: bytes, status: int = 200, content_type: str = "application/json") -> Responder:
    return lambda _r: web.Response(body=body, status=status, headers={"Content-Type": content_type})


@pytest.fixture
async def square() -> AsyncIterator[tuple[ScriptedSquare, str]]:
    fake = ScriptedSquare()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


