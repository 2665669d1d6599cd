"""Sending outside a request: email, push, workers. The same decisions as the middleware's.

A `ThrottleClient` wraps the engine the middleware uses (or one built from the same policy,
store and secret), so a person's caps and creepiness budget are one across HTTP, workers and
channels. Beside `decide`, it offers a `preflight` that writes nothing, and reservations for
sends that can fail downstream: `reserve` counts the message at once, `commit` keeps it,
`release` takes exactly it back out, and a reservation neither committed nor released within
its hold stops counting by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, Unpack

from throttle.decision import Decision
from throttle.engine import Engine
from throttle.errors import ConfigurationError, StoreUnavailable
from throttle.markets import MarketSet, MarketWatcher, load_markets, market_sources
from throttle.message import Marker
from throttle.middleware import ThrottleMiddleware, secret_key
from throttle.policy import Policy, load_given_policy, policy_files
from throttle.reload import PolicyWatcher
from throttle.store import Store, open_store
from throttle.store.base import Hold

__all__ = ["MarkerFields", "Reservation", "ThrottleClient"]

# Longest id a person may have, as the middleware's `identify` (an email address is 254).
_MAX_ID_LENGTH = 1024
_RESERVATION_BYTES = 8
# A commit or release waits this long at least, whatever the policy's store timeout (made for
# a request's path): it comes after a send that took its own time, and failing it costs a
# count (a commit's message stops counting when its hold runs out).
_SETTLE_TIMEOUT_SECONDS = 2.0
# `reserving` commits a sent message this many times at most, waiting 0.1 s, then 0.2 s.
_COMMIT_ATTEMPTS = 3
_COMMIT_BACKOFF_SECONDS = 0.1
logger = logging.getLogger(__name__)


class MarkerFields(TypedDict, total=False):
    """The keyword fields of `personalization()`, to describe a message without a `Marker`."""

    campaign: str
    segment: str
    channel: str
    signals: tuple[str, ...] | list[str]
    event_age: int | None
    inferred: bool
    third_party: bool
    explained: bool
    transactional: bool
    tags: tuple[str, ...] | list[str]
    advertising: bool
    category: str
    relevance: float | None
    decides: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """A message counted against the person's caps and budget before it is sent.

    - `decision`: the decision, as `ThrottleClient.decide` gives it; send the personalized
      content only when `allowed`.
    - `held`: the store counted it as a reservation, which `commit` keeps and `release` takes
      back out. False when nothing was counted (a refusal, a transactional message, shadow
      mode delivering what a cap refused, or a store that did not answer).
      Held but not allowed: a `category` outcome, counted like a delivery; send content about
      the category and commit, or release.
    - `token`: names the reservation (the person's pseudonym and the reservation's id, never
      their id), so a commit or release may come from another process.
    - `expires_at`: when, in seconds since the epoch, it stops counting unless committed.
    """

    decision: Decision
    held: bool
    token: str
    expires_at: float

    @property
    def allowed(self) -> bool:
        """Whether the person may receive the personalized content."""
        return self.decision.delivers_personalized


class ThrottleClient:
    """Decides personalized messages sent outside a request, by the middleware's rules.

    ```python
    client = ThrottleClient(
        policy="policies/default.toml", store="redis://127.0.0.1:6379/0", secret=SECRET
    )
    reservation = await client.reserve("user-42", campaign="spring-sale", channel="email")
    if reservation.allowed:
        try:
            await send_email(...)
        except Exception:
            await client.release(reservation)
            raise
        await client.commit(reservation)
    ```
    - `policy`, `store`, `secret`, `clock`: as `ThrottleMiddleware` takes them; give the same
      ones as the web app, and caps and budgets are one per person across both.
    - `markets`: policies per market, as `ThrottleMiddleware` takes them; each call then names
      its `market=` (`None`: the base policy decides).
    - `hold`: how long, in seconds, a reservation counts unless committed or released.
    - `reload_interval`: how often to look for an edited policy file (`None`: never).

    `ThrottleClient.from_middleware(mw)` (or `mw.client`) shares a middleware's engine, its
    policy reloads included. A policy, store or secret that cannot be used raises
    `PolicyError` or `ConfigurationError`. When the store does not answer, `decide` follows
    the policy's `on_error` as the middleware does, and `preflight` and `reserve` answer
    segment content (`store-unavailable`): nothing is counted, so nothing is allowed.
    """

    _watcher: PolicyWatcher | None
    _market_watcher: MarketWatcher | None

    def __init__(
        self,
        *,
        policy: str | Path | Sequence[str | Path] | Policy,
        store: str | Store = "memory://",
        secret: str | bytes | None = None,
        markets: MarketSet | None = None,
        hold: float = 300.0,
        reload_interval: float | None = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        loaded = load_given_policy(policy)
        base = policy_files(policy)
        sources = market_sources(markets) if markets is not None else {}
        by_market = load_markets(base, sources)
        opened = open_store(store) if isinstance(store, str) else store
        engine = Engine(
            loaded, opened, secret=secret_key(secret, opened), clock=clock, markets=by_market
        )
        self._setup(engine, hold)
        if reload_interval is not None and base is not None:
            self._watcher = PolicyWatcher(base, loaded, interval=reload_interval)
            if sources:
                self._market_watcher = MarketWatcher(
                    base, sources, by_market, interval=reload_interval
                )

    @classmethod
    def from_engine(cls, engine: Engine, *, hold: float = 300.0) -> ThrottleClient:
        """A client deciding with `engine` (its policy, store, secret, clock and trail)."""
        client = cls.__new__(cls)
        client._setup(engine, hold)
        return client

    @classmethod
    def from_middleware(
        cls, middleware: ThrottleMiddleware, *, hold: float = 300.0
    ) -> ThrottleClient:
        """A client sharing `middleware`'s engine: the policy it reloads, its store, its secret."""
        if middleware.refusal is not None:
            raise ConfigurationError(middleware.refusal)
        return cls.from_engine(middleware.engine, hold=hold)

    def _setup(self, engine: Engine, hold: float) -> None:
        if not (isinstance(hold, int | float) and math.isfinite(hold) and hold > 0):
            raise ConfigurationError(f"hold must be a positive number of seconds, got {hold!r}")
        self.engine = engine
        self.hold = float(hold)
        self._clock = engine.clock
        self._watcher = None
        self._market_watcher = None

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    async def decide(
        self,
        person: str | int,
        message: Marker | None = None,
        /,
        *,
        zone: str | None = None,
        purposes: frozenset[int] | None = None,
        market: str | None = None,
        **fields: Unpack[MarkerFields],
    ) -> Decision:
        """Decide one message for one person, and count it when it is delivered, exactly as
        the middleware would for a response carrying the same marker.

        `message` is a `Marker`, or give `personalization()`'s keyword fields instead
        (`campaign=` at least). `zone` is the person's IANA time zone (calendar caps, quiet
        hours), `purposes` their TCF consent when the policy needs one, `market` whose policy
        decides (see `markets`).
        """
        marker, person = self._prepared(person, message, fields)
        return await self.engine.decide(
            marker, person=person, zone=zone, purposes=purposes, market=market
        )

    async def preflight(
        self,
        person: str | int,
        message: Marker | None = None,
        /,
        *,
        zone: str | None = None,
        purposes: frozenset[int] | None = None,
        market: str | None = None,
        **fields: Unpack[MarkerFields],
    ) -> Decision:
        """What `decide` would answer now, without recording anything: no counter, budget,
        recent decision, audit entry or observation is written. Use it before building content
        that a refusal would throw away; the send itself still needs `decide` or `reserve`
        (another message may take the last slot in between)."""
        marker, person = self._prepared(person, message, fields)
        decision, _ = await self.engine.ask(
            marker, person=person, zone=zone, purposes=purposes, market=market, dry_run=True
        )
        return decision

    async def reserve(
        self,
        person: str | int,
        message: Marker | None = None,
        /,
        *,
        hold: float | None = None,
        zone: str | None = None,
        purposes: frozenset[int] | None = None,
        market: str | None = None,
        **fields: Unpack[MarkerFields],
    ) -> Reservation:
        """Decide and, when allowed, count the message at once as a reservation: `commit` it
        once sent, `release` it when the send failed. Neither within `hold` seconds (the
        client's by default): it stops counting by itself."""
        marker, person = self._prepared(person, message, fields)
        seconds = self.hold if hold is None else hold
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"hold must be a positive number of seconds, got {seconds!r}")
        reservation = secrets.token_hex(_RESERVATION_BYTES)
        expires_at = self._clock() + seconds
        decision, held = await self.engine.ask(
            marker,
            person=person,
            zone=zone,
            purposes=purposes,
            market=market,
            hold=Hold(reservation, max(1, math.ceil(seconds * 1000))),
        )
        token = f"{self.engine.pseudonym(person)}.{reservation}"
        return Reservation(decision, held, token, expires_at)

    async def commit(self, reservation: Reservation | str) -> bool:
        """Keep a reservation: it counts as any delivery from now on. Whether it was still
        held (False: not held, settled already, or its hold ran out). Raises
        `StoreUnavailable` when the store does not answer; then try again."""
        return await self._settle(reservation, commit=True)

    async def release(self, reservation: Reservation | str) -> bool:
        """Take a reservation back: exactly its counter entries and budget spend go, at once.
        Whether it was still held. Raises `StoreUnavailable` when the store does not answer
        (the reservation then stops counting when its hold runs out)."""
        return await self._settle(reservation, commit=False)

    @contextlib.asynccontextmanager
    async def reserving(
        self,
        person: str | int,
        message: Marker | None = None,
        /,
        *,
        hold: float | None = None,
        zone: str | None = None,
        purposes: frozenset[int] | None = None,
        market: str | None = None,
        **fields: Unpack[MarkerFields],
    ) -> AsyncIterator[Reservation]:
        """`reserve`, then `commit` when the block ends normally and `release` when it raises.

        The block's send went out once it ends normally, so a commit the store refuses is tried
        again a few times and then logged, never raised: raising would read as a failed send,
        and a retry would send the message twice (uncommitted, it stops counting after `hold`).

        ```python
        async with client.reserving(user_id, campaign="spring-sale", channel="email") as r:
            if r.allowed:
                await send_email(...)
        ```
        """
        reservation = await self.reserve(
            person, message, hold=hold, zone=zone, purposes=purposes, market=market, **fields
        )
        try:
            yield reservation
        except BaseException:
            if reservation.held:
                with contextlib.suppress(StoreUnavailable):  # it stops counting by itself
                    await self.release(reservation)
            raise
        if reservation.held:
            await self._commit_after_send(reservation)

    async def _commit_after_send(self, reservation: Reservation) -> None:
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                await self.commit(reservation)
                return
            except StoreUnavailable as error:
                if attempt + 1 == _COMMIT_ATTEMPTS:
                    logger.warning(
                        "throttle: a sent message's reservation could not be committed; it "
                        "stops counting when its hold runs out: %s",
                        error,
                        extra={"campaign": reservation.decision.campaign, "why": str(error)},
                    )
                    return
                await asyncio.sleep(_COMMIT_BACKOFF_SECONDS * 2**attempt)

    async def aclose(self) -> None:
        """Close the store (it writes what it holds back first)."""
        await self.engine.aclose()

    async def __aenter__(self) -> ThrottleClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        policy = self.engine.policy
        store = type(self.engine.store).__name__
        return (
            f"ThrottleClient(policy={policy.name}@{policy.version}, store={store}, "
            f"hold={self.hold:g})"
        )

    def _prepared(
        self, person: str | int, message: Marker | None, fields: MarkerFields
    ) -> tuple[Marker, str]:
        if self._watcher is not None:
            self._reload(self._watcher)
        if message is None:
            if "campaign" not in fields:
                raise TypeError(
                    "give the message: a Marker, or personalization()'s keyword fields "
                    "(campaign=... at least)"
                )
            given: dict[str, Any] = dict(fields)
            for name in ("signals", "tags"):  # lists, as personalization() takes them
                if name in given:
                    given[name] = tuple(given[name])
            message = Marker(**given)
        elif fields:
            raise TypeError("give the message as a Marker or as keyword fields, not both")
        elif not isinstance(message, Marker):
            raise TypeError(f"message must be a Marker, not {type(message).__name__}")
        return message, _person_id(person)

    def _reload(self, watcher: PolicyWatcher) -> None:
        try:
            reloaded = watcher.poll()
            by_market = self._market_watcher.poll() if self._market_watcher is not None else {}
        except Exception as error:  # a policy edit never costs a send; it is logged instead
            logger.warning("throttle: policy reload failed: %s", error, extra={"why": str(error)})
            return
        if reloaded is not None:
            self.engine.policy = reloaded
        for market, policy in by_market.items():
            self.engine.set_market(market, policy)

    async def _settle(self, reservation: Reservation | str, *, commit: bool) -> bool:
        if isinstance(reservation, Reservation):
            if not reservation.held:
                return False
            token = reservation.token
        else:
            token = reservation
        pseudonym, dot, held_id = token.partition(".")
        if not (dot and pseudonym and held_id and pseudonym.isalnum() and held_id.isalnum()):
            raise ValueError(f"{token!r} is not a reservation's token")
        engine = self.engine
        return await engine.guard.run(
            engine.store.settle,
            pseudonym,
            held_id,
            commit=commit,
            now_ms=math.floor(self._clock() * 1000),
            timeout=max(engine.policy.store.timeout, _SETTLE_TIMEOUT_SECONDS),
        )


def _person_id(person: str | int) -> str:
    """The person's id as the middleware's `identify` would give it; a bad one is a bug."""
    if isinstance(person, int) and not isinstance(person, bool):
        person = str(person)
    if not isinstance(person, str) or not person or len(person) > _MAX_ID_LENGTH:
        raise ValueError(
            f"person must be a non-empty str (at most {_MAX_ID_LENGTH} characters) or an int, "
            f"got {type(person).__name__}"
        )
    return person
