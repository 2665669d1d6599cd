"""A small storefront that uses throttle the way a real app would.

Run it yourself:  THROTTLE_SECRET=... python -m uvicorn --factory examples.storefront:create_app
Sign in with HTTP Basic auth as ana, ben, cleo or dev (password "demo").
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from throttle import FallbackRequest, SegmentContent, ThrottleMiddleware, personalization


@dataclass(frozen=True)
class Profile:
    city: str
    segment: str
    last_purchase: str


PROFILES = {
    "ana": Profile("Berlin", "eu/de/berlin", "trail running shoes"),
    "ben": Profile("Munich", "eu/de/munich", "a rain jacket"),
    "cleo": Profile("Lyon", "eu/fr/lyon", "a yoga mat"),
    "dev": Profile("Austin", "us/tx/austin", "a camping stove"),
}
PASSWORD = "demo"

# Generic offers a segment may see: nothing in them is about one person.
BEST_SELLERS = {
    "eu/de": ["merino socks", "a city backpack"],
    "eu": ["a reusable bottle", "merino socks"],
    "": ["gift cards", "a reusable bottle"],
}


class BasicAuth(AuthenticationBackend):
    """HTTP Basic auth against the demo's user table."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        scheme, _, encoded = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("malformed credentials") from None
        if name not in PROFILES or password != PASSWORD:
            raise AuthenticationError("unknown user or wrong password")
        return AuthCredentials(["authenticated"]), SimpleUser(name)


def profile_of(request: Request) -> Profile:
    return PROFILES.get(request.user.display_name if request.user.is_authenticated else "") or (
        Profile("", "", "")
    )


async def home(request: Request) -> JSONResponse:
    # Not marked: throttle never touches it.
    return JSONResponse({"welcome": "to the demo storefront", "offers": "/offers/recommended"})


async def recommended(request: Request) -> JSONResponse:
    profile = profile_of(request)
    offer = {
        "offer": "10% off new trail shoes",
        "why": f"because you bought {profile.last_purchase}",
    }
    return JSONResponse(
        offer,
        headers=personalization(
            "spring-sale",
            segment=profile.segment,
            signals=["purchase_history"],
            explained=True,
        ),
    )


async def nearby(request: Request) -> JSONResponse:
    profile = profile_of(request)
    offer = {"offer": f"our {profile.city} store, 300 m from you right now, has your size"}
    return JSONResponse(
        offer,
        headers=personalization(
            "nearby-store",
            segment=profile.segment,
            signals=["location.precise"],
            event_age=60,
        ),
    )


async def for_you(request: Request) -> JSONResponse:
    offer = {"offer": "family deals: kids' shoes 2 for 1"}
    return JSONResponse(
        offer,
        headers=personalization(
            "family-deals",
            segment=profile_of(request).segment,
            signals=["household.children"],
            inferred=True,
        ),
    )


async def latest_order(request: Request) -> JSONResponse:
    profile = profile_of(request)
    receipt = {"order": "#1042", "item": profile.last_purchase, "status": "shipped"}
    return JSONResponse(
        receipt,
        headers=personalization("order-status", signals=["purchase_history"], transactional=True),
    )


async def segment_offers(request: FallbackRequest) -> SegmentContent | None:
    """Segment content: best sellers for the k-anonymous segment, nothing about the person."""
    if request.media_type.split(";")[0] != "application/json":
        return None
    region = "/".join(request.segment.split("/")[:2])
    offers = BEST_SELLERS.get(region) or BEST_SELLERS.get(region.split("/")[0]) or BEST_SELLERS[""]
    return SegmentContent.json({"offer": f"popular right now: {offers[0]}", "for": "everyone"})


def create_app(
    *,
    store: str = "memory://",
    secret: str | None = None,
    policy: str = "policies/default.toml",
) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/offers/recommended", recommended),
            Route("/offers/nearby", nearby),
            Route("/offers/for-you", for_you),
            Route("/orders/latest", latest_order),
        ]
    )
    # Added first, so it runs inside AuthenticationMiddleware (the last added is outermost):
    # by the time a response is decided, scope["user"] names who it is for.
    app.add_middleware(
        ThrottleMiddleware,
        policy=policy,
        store=store,
        secret=secret or os.environ.get("THROTTLE_SECRET"),
        fallback=segment_offers,
    )
    app.add_middleware(AuthenticationMiddleware, backend=BasicAuth())
    return app
