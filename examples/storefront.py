"""A small storefront that uses throttle the way a real app would.

Run it yourself, from the repository's root:

    .venv/bin/python -m uvicorn --factory examples.storefront:create_app
    curl -i -u ana:demo http://127.0.0.1:8000/offers/recommended

Sign in with HTTP Basic auth as ana, ben, cleo or dev, password "demo"; or don't, as a guest.
"""

from __future__ import annotations

import base64
import binascii
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
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from throttle import (
    FallbackRequest,
    SegmentContent,
    Store,
    ThrottleMiddleware,
    personalization,
    privacy_routes,
)

PASSWORD = "demo"


@dataclass(frozen=True)
class Profile:
    city: str
    segment: str  # broad to narrow; throttle may fall back to any of its ancestors
    last_purchase: str


PROFILES = {
    "ana": Profile("Berlin", "eu/de/berlin", "trail running shoes"),
    "ben": Profile("Munich", "eu/de/munich", "a rain jacket"),
    "cleo": Profile("Lyon", "eu/fr/lyon", "a yoga mat"),
    "dev": Profile("Austin", "us/tx/austin", "a camping stove"),
}
GUEST = Profile("", "", "nothing yet")

# Generic content for segments: nothing in it is about one person.
BEST_SELLERS = {
    "eu/de": ["merino socks", "a city backpack"],
    "eu/fr": ["a rain poncho", "merino socks"],
    "": ["gift cards", "a reusable bottle"],
}


class BasicAuth(AuthenticationBackend):
    """HTTP Basic auth against the user table above."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        scheme, _, encoded = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("malformed credentials") from None
        if name not in PROFILES or password != PASSWORD:
            raise AuthenticationError("unknown user or wrong password")
        return AuthCredentials(["authenticated"]), SimpleUser(name)


def unauthorized(conn: HTTPConnection, error: AuthenticationError) -> Response:
    return PlainTextResponse(str(error), 401, {"WWW-Authenticate": 'Basic realm="storefront"'})


def signed_in(request: Request) -> Profile:
    return PROFILES.get(request.user.display_name, GUEST)  # a guest's display name is ""


async def home(request: Request) -> JSONResponse:
    # Not marked, so throttle lets it through untouched.
    return JSONResponse({"welcome": "to the demo storefront", "see": "/offers/recommended"})


async def recommended(request: Request) -> JSONResponse:
    profile = signed_in(request)
    offer = {"why": f"because you bought {profile.last_purchase}", "offer": "trail socks -20%"}
    marker = personalization(
        "spring-sale", segment=profile.segment, signals=["purchase_history"], explained=True
    )
    return JSONResponse(offer, headers=marker)


async def nearby(request: Request) -> JSONResponse:
    profile = signed_in(request)
    offer = {"offer": f"you are 300 m from our {profile.city} store: pop in!"}
    marker = personalization(
        "nearby-store", segment=profile.segment, signals=["location.precise"], event_age=60
    )
    return JSONResponse(offer, headers=marker)


async def for_you(request: Request) -> JSONResponse:
    profile = signed_in(request)
    offer = {"offer": "for your kids: school shoes, 2 for 1"}
    marker = personalization(
        "family-deals", segment=profile.segment, signals=["household.children"], inferred=True
    )
    return JSONResponse(offer, headers=marker)


async def wellness(request: Request) -> JSONResponse:
    profile = signed_in(request)
    offer = {"offer": "for your back: our ergonomic hiking pack", "why": "you told us so"}
    # Health data is a special category: never personalized without explicit consent.
    marker = personalization(
        "wellness", segment=profile.segment, signals=["health"], explained=True
    )
    return JSONResponse(offer, headers=marker)


async def latest_order(request: Request) -> JSONResponse:
    profile = signed_in(request)
    receipt = {"order": "#1042", "item": profile.last_purchase, "status": "shipped"}
    marker = personalization("order-status", signals=["purchase_history"], transactional=True)
    return JSONResponse(receipt, headers=marker)


async def segment_offers(request: FallbackRequest) -> SegmentContent | None:
    """Best sellers for the k-anonymous segment throttle chose, or for its nearest ancestor."""
    segment = request.segment
    while segment not in BEST_SELLERS:
        segment = segment.rpartition("/")[0]  # "eu/de/berlin" -> "eu/de" -> "eu" -> ""
    return SegmentContent.json(
        {"for": segment or "everyone", "best_sellers": BEST_SELLERS[segment]}
    )


def create_app(
    *,
    store: str | Store = "memory://",
    secret: str | None = None,
    policy: str = "policies/default.toml",
) -> Starlette:
    """The storefront. With a Redis `store`, pass a `secret` or set THROTTLE_SECRET."""
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/offers/recommended", recommended),
            Route("/offers/nearby", nearby),
            Route("/offers/for-you", for_you),
            Route("/offers/wellness", wellness),
            Route("/orders/latest", latest_order),
            # The signed-in person's own page: level, why, access and erasure.
            Mount("/privacy", routes=privacy_routes()),
        ]
    )
    app.add_middleware(
        ThrottleMiddleware, policy=policy, store=store, secret=secret, fallback=segment_offers
    )
    # Added last, so outermost: who is signed in is settled before anything else runs, and
    # throttle finds scope["user"] already set when it decides (either order would work, as
    # AuthenticationMiddleware sets it on the scope dict they share).
    app.add_middleware(AuthenticationMiddleware, backend=BasicAuth(), on_error=unauthorized)
    return app
