"""Small Starlette apps for the middleware tests: a handler for every kind of response."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from throttle import ThrottleMiddleware, personalization, privacy_routes

PERSONAL_BODY = {"offer": "running shoes for ana, size 38, seen in Berlin yesterday"}
PERSONAL_HEADERS = {
    "x-recommendation-id": "ana-8812",
    "etag": '"personal-etag"',
    "last-modified": "Sun, 22 Nov 2026 10:00:00 GMT",
    "set-cookie": "last_viewed=shoe-8812",
    "content-disposition": 'inline; filename="ana-offer.json"',
    "link": "</img/ana.png>; rel=preload",
}


class HeaderUser(AuthenticationBackend):
    """Test-only sign-in: the X-Test-User header names the signed-in person."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-test-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def marker_headers(request: Request) -> dict[str, str]:
    """The marker comes from the query, raw, so tests can send malformed ones too."""
    raw = request.query_params.get("marker")
    if raw is not None:
        return {"personalization": raw}
    return personalization(
        request.query_params.get("campaign", "spring-sale"),
        segment=request.query_params.get("segment", ""),
        signals=request.query_params.getlist("signal"),
        inferred="inferred" in request.query_params,
        transactional="transactional" in request.query_params,
        advertising="advertising" in request.query_params,
        explained="explained" in request.query_params,
        category=request.query_params.get("category", ""),
        relevance=float(request.query_params["relevance"])
        if "relevance" in request.query_params
        else None,
        decides=request.query_params.get("decides", ""),
    )


async def plain(request: Request) -> Response:
    return PlainTextResponse("hello, nobody in particular", headers={"x-app": "1"})


async def offer(request: Request) -> Response:
    return JSONResponse(PERSONAL_BODY, headers={**PERSONAL_HEADERS, **marker_headers(request)})


async def cached_offer(request: Request) -> Response:
    headers = {"cache-control": "no-store", **marker_headers(request)}
    return JSONResponse(PERSONAL_BODY, headers=headers)


async def page(request: Request) -> Response:
    body = "<h1>Hello ana, your size 38 shoes are back</h1>"
    return Response(body, media_type="text/html", headers=marker_headers(request))


async def no_content(request: Request) -> Response:
    return Response(status_code=204, headers=marker_headers(request))


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"offer": ', b'"shoes for ana"', b"}"):
            yield part

    return StreamingResponse(
        chunks(), media_type="application/json", headers=marker_headers(request)
    )


ROUTES: list[BaseRoute] = [
    Route("/plain", plain),
    Route("/offer", offer, methods=["GET", "HEAD"]),
    Route("/cached-offer", cached_offer),
    Route("/page", page),
    Route("/no-content", no_content),
    Route("/stream", stream),
]


class ScopeSpy:
    """An outer middleware that keeps the scope of the last request, as an app's logger would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.last_scope: Scope | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.last_scope = scope
        await self.app(scope, receive, send)


def storefront(**throttle: Any) -> Starlette:
    """The test app with throttle mounted; keyword arguments go to ThrottleMiddleware."""
    return Starlette(
        # Each app its own privacy routes, and so its own per-person rate limits.
        routes=[*ROUTES, Mount("/privacy", routes=privacy_routes())],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderUser()),
            Middleware(ThrottleMiddleware, **throttle),
        ],
    )


def bare() -> Starlette:
    return Starlette(
        routes=[*ROUTES, Mount("/privacy", routes=privacy_routes())],
        middleware=[Middleware(AuthenticationMiddleware, backend=HeaderUser())],
    )


async def not_modified(request: Request) -> Response:
    headers = {"etag": '"personal-etag"', **marker_headers(request)}
    return Response(status_code=304, headers=headers)


async def public_offer(request: Request) -> Response:
    headers = {"cache-control": "public, max-age=600, s-maxage=600", **marker_headers(request)}
    return JSONResponse(PERSONAL_BODY, headers=headers)


async def generated_headers(request: Request) -> Response:
    """A response whose headers are a one-shot generator, as ASGI allows."""
    pairs = [(b"content-type", b"application/json"), (b"x-app", b"1")]
    if "marked" in request.query_params:
        pairs.append((b"personalization", b'campaign="spring-sale"'))

    class OneShot(Response):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": iter(pairs)})
            await send({"type": "http.response.body", "body": b'{"offer": "for ana"}'})

    return OneShot()


ROUTES += [
    Route("/not-modified", not_modified),
    Route("/public-offer", public_offer),
    Route("/generated-headers", generated_headers),
]
