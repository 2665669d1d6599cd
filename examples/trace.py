"""A shop's personalized messages over some days, as a trace to replay through a policy.

Run it from the repository's root:

    .venv/bin/python examples/trace.py --people 10000 --days 7 --seed 1 > week.jsonl
    .venv/bin/python examples/trace.py --people 70000 --days 7 --messages 1000000 --out big.jsonl

and replay it with `throttle simulate POLICY TRACE`. The first makes about 160,000 lines in under
two seconds, the second a million in about ten. The same arguments give the same trace, byte for
byte. `--start` is a date or an ISO 8601 time, UTC unless it names an offset; by default
2026-11-02, a Monday after the clocks went back in Europe and North America. The trace holds
the messages sent in `[start, start + days)`, and `--messages N` keeps only the first N of them.
In Python, `generate(people, days, seed, start, messages)` yields the same messages as dicts.

The format
----------
JSON lines (UTF-8, in fact ASCII): one message per line, a JSON object written with Python's
`json` defaults; the lines sorted by `t`, lines with equal `t` in the order they were made. A
line looks like this (one line in the file):

    {"t": 1793604704.662, "person": "p-03064", "campaign": "abandoned-cart", "channel": "email",
     "segment": "eu/de/returning", "signals": ["cart", "browsing_history"], "event_age": 3982,
     "explained": true, "tags": ["promo", "retargeting"], "zone": "Europe/Berlin"}

Its members come in the order below. An optional member is left out when it has its default,
so that lines stay short.

- `t` (required): when the message is sent, in seconds since the Unix epoch; a number with at
  most three decimals (milliseconds).
- `person` (required): who receives it, a string (`"p-00042"`), or `null` for a guest, a visitor
  who is not signed in. The same string is the same person throughout the trace.
- `campaign` (required): the campaign the message belongs to, a string.
- `channel`: `"web"` (a page the person is viewing; the default), `"email"` or `"push"`.
- `segment`: the audience whose generic content may stand in for the message, a path from broad
  to narrow: parts of letters, digits, `.`, `_` and `-` joined by `/` (`"eu/de/returning"`).
  Default `""`, everyone; this generator always gives one.
- `signals`: the data categories the message was built from, a list of strings; default `[]`.
  Mostly names `policies/default.toml` weighs (`"cart"`, `"purchase_history"`,
  `"location.precise"`, `"health"`, ...); now and then one it does not (`"weather"`,
  `"life_event"`, `"pregnancy"`), as real campaigns do.
- `event_age`: for a message triggered by something the person did (a cart left behind, a
  product just viewed, a store just passed), the seconds since then, an integer >= 0. Left out
  when nothing triggered the message.
- `inferred`, `third_party`, `explained`, `transactional`: booleans, default `false`: the data
  was guessed rather than given; it came from a third party (bought, or tracked on other
  sites); the message says why the person sees it; the person asked for the message (a receipt,
  a delivery notice). Transactional messages belong to a campaign tagged `service`.
- `tags`: the campaign's tags, a list of strings (`"promo"`, `"service"`, `"launch"`, ...);
  default `[]`. All of a campaign's messages carry the same tags.
- `zone`: the IANA time zone the person lives in (`"Europe/Berlin"`); this generator always
  gives one. A person keeps one zone, the zone of the market their segment starts with.
- `gpc`: `true` when the person's browser sends Global Privacy Control (`Sec-GPC: 1`); default
  `false`. A person keeps one value.

A reader should ignore members it does not know, so that the format can grow.

The traffic, and why
--------------------
Frequency caps and a creepiness budget bite on the few people who see a lot, on bursts and on
creepy campaigns, so the trace has each as a marketer would recognise it from their own logs:

- Heavy and light users. How active a person is comes from a Pareto distribution (shape 1.1,
  capped): most people visit a few times a week, a few several times a day, and the top tenth
  of people receive nearly half of all messages. Heavier users are more often returning
  customers, subscribed to email and users of the app (push). The most active returning
  customers form a `.../returning/vip` sub-segment, in the smaller markets small enough that
  k-anonymity stands it in by its parent.
- Sessions and bursts. People come in sessions, a Poisson number a day, one at a time; a
  session views a few pages (a geometric number, 3.3 on average) a minute or so apart, each
  page showing one personalized message. Sessions have sequels: a cart left behind brings an
  `abandoned-cart` push 20 to 45 minutes later, an email one to three hours later and a
  reminder the next day; a purchase brings an order confirmation at once, a shipping email the
  next day and a delivery notice two to four days later (`order-update`, transactional, sent to
  everyone who orders).
- Send times. Email blasts go out to subscribers at 09:00 in their zone, sent over half an hour,
  by a weekly rota of campaigns (none on Sundays; `health-picks` on Wednesdays besides); a push
  at 19:00 to half the app users; and a `store-nearby` push when a person with the app passes
  a store in the daytime.
- A daily and a weekly curve. Sessions start by an hourly curve in the person's local time:
  little at night, a rise through the morning, a lunch bump, the peak at 19:00-22:00. Sundays
  are the busiest days and Fridays the quietest.
- A mix of creepiness. `spring-sale` (promo; mostly no or first-party data), `abandoned-cart`
  (promo, retargeting on the cart, minutes to days after the fact), `new-arrivals` (launch;
  browsing, sometimes an inferred or bought gender and age), `for-you` (recommendations from
  browsing, now and then with bought demographics or an inferred life event), `loyalty`
  (returning customers' purchases), `health-picks` (an inferred health interest, held for one
  person in twelve; sometimes with children, bought data or a pregnancy), `store-nearby`
  (precise location, just now) and `order-update` (service).
- Markets and zones. People live in markets (`eu/de`, `eu/fr`, `us/ny`, `us/ca`, `jp/tokyo`,
  ...) weighted like a European shop with an American arm. Their segment is the market plus
  `new` or `returning`; their zone is the market's.
- Consent and guests. One person in ten sends GPC. About one line in twenty is a guest's: a web
  message in the market and on the daily curve of the signed-in traffic, whose segment is the
  market alone and whose signals are only what a browser shows (the visit's pages, the place,
  cookies matched with bought data), never purchases, a cart or financial data. A guest has no
  identity to keep, so each of their lines draws GPC on its own, one in ten.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo

DEFAULT_START = datetime(2026, 11, 2, tzinfo=UTC)

INFERRED = 1
THIRD_PARTY = 2
EXPLAINED = 4
GPC = 8

DAY = 86_400.0
HOUR = 3_600.0
# The share of lines that are a guest's.
ANONYMOUS_SHARE = 0.05
# Follow-ups (delivery notices) come at most this many days after what caused them.
FOLLOW_UP_DAYS = 5

# (the segment's market, its zone, how many of the shop's people live there)
MARKETS: tuple[tuple[str, str, float], ...] = (
    ("eu/de", "Europe/Berlin", 14),
    ("eu/fr", "Europe/Paris", 11),
    ("eu/es", "Europe/Madrid", 7),
    ("eu/it", "Europe/Rome", 7),
    ("eu/nl", "Europe/Amsterdam", 4),
    ("eu/pl", "Europe/Warsaw", 4),
    ("eu/ie", "Europe/Dublin", 2),
    ("us/ny", "America/New_York", 10),
    ("us/fl", "America/New_York", 5),
    ("us/il", "America/Chicago", 5),
    ("us/tx", "America/Chicago", 7),
    ("us/co", "America/Denver", 2),
    ("us/ca", "America/Los_Angeles", 11),
    ("ca/on", "America/Toronto", 4),
    ("br/sp", "America/Sao_Paulo", 3),
    ("jp/tokyo", "Asia/Tokyo", 2),
    ("au/nsw", "Australia/Sydney", 2),
)

# Sessions started in each local hour, 00:00 to 23:00 (relative).
HOURLY = (
    0.8, 0.4, 0.2, 0.15, 0.15, 0.3, 0.8, 1.8, 2.6, 3.0, 3.2, 3.4,
    4.0, 3.8, 3.2, 3.2, 3.4, 3.8, 4.6, 5.6, 6.4, 6.2, 4.6, 2.2,
)  # fmt: skip
# Web traffic by local weekday, Monday first.
WEEKLY = (1.0, 0.95, 0.95, 1.0, 0.9, 1.1, 1.25)

# (weight, signals, flags): the ways a campaign's messages are built.
Variant = tuple[float, tuple[str, ...], int]


@dataclass(frozen=True)
class Campaign:
    name: str
    tags: tuple[str, ...]
    variants: tuple[Variant, ...]
    explained: float  # the share of its messages that say why
    transactional: bool = False


CAMPAIGNS = (
    Campaign(
        "spring-sale",
        ("promo",),
        ((50, (), 0), (25, ("purchase_history",), 0), (15, ("browsing_history",), 0),
         (10, ("location.country",), 0)),
        explained=0.1,
    ),
    Campaign(
        "abandoned-cart",
        ("promo", "retargeting"),
        ((70, ("cart",), 0), (24, ("cart", "browsing_history"), 0),
         (6, ("cart", "browsing_history"), THIRD_PARTY)),
        explained=0.5,
    ),
    Campaign(
        "new-arrivals",
        ("launch",),
        ((50, ("browsing_history",), 0), (30, ("purchase_history", "browsing_history"), 0),
         (15, ("demographics.gender",), INFERRED),
         (5, ("demographics.age", "demographics.gender"), THIRD_PARTY)),
        explained=0.2,
    ),
    Campaign(
        "for-you",
        ("recommendation",),
        ((55, ("browsing_history",), 0), (25, ("browsing_history", "purchase_history"), 0),
         (10, ("browsing_history", "location.city"), 0),
         (6, ("browsing_history", "demographics.age", "demographics.gender"), THIRD_PARTY),
         (4, ("browsing_history", "life_event"), INFERRED)),
        explained=0.35,
    ),
    Campaign(
        "loyalty",
        ("promo", "loyalty"),
        ((70, ("purchase_history",), 0), (20, ("purchase_history", "demographics.age"), 0),
         (10, ("purchase_history", "financial"), INFERRED)),
        explained=0.6,
    ),
    Campaign(
        "health-picks",
        ("promo", "wellness"),
        ((55, ("health",), INFERRED), (20, ("health", "purchase_history"), INFERRED),
         (15, ("health", "household.children"), INFERRED),
         (7, ("health",), INFERRED | THIRD_PARTY), (3, ("health", "pregnancy"), INFERRED)),
        explained=0.1,
    ),
    Campaign(
        "store-nearby",
        ("promo", "local"),
        ((60, ("location.precise",), 0), (30, ("location.city", "weather"), 0),
         (10, ("location.precise", "purchase_history"), 0)),
        explained=0.3,
    ),
    Campaign(
        "order-update",
        ("service",),
        ((100, ("purchase_history",), 0),),
        explained=0.0,
        transactional=True,
    ),
)  # fmt: skip
SPRING_SALE, ABANDONED_CART, NEW_ARRIVALS, FOR_YOU, LOYALTY, HEALTH_PICKS = range(6)
STORE_NEARBY, ORDER_UPDATE = 6, 7

# The 09:00 email blast and the 19:00 push, by local weekday, Monday first (None: no blast).
EMAIL_ROTA = (SPRING_SALE, NEW_ARRIVALS, LOYALTY, SPRING_SALE, FOR_YOU, SPRING_SALE, None)
PUSH_ROTA = (SPRING_SALE, FOR_YOU, NEW_ARRIVALS, SPRING_SALE, FOR_YOU, SPRING_SALE, NEW_ARRIVALS)
HEALTH_EMAIL_DAY = 2  # Wednesday

# How likely a web page shows each campaign, by what is known of the person.
WEB_BASE = {SPRING_SALE: 30.0, NEW_ARRIVALS: 20.0, FOR_YOU: 22.0}
WEB_RETURNING = {LOYALTY: 10.0}
WEB_HEALTH = {HEALTH_PICKS: 8.0}
WEB_CART = {ABANDONED_CART: 18.0}
WEB_ORDERED = {ORDER_UPDATE: 6.0}
GUEST = {SPRING_SALE: 45.0, NEW_ARRIVALS: 30.0, FOR_YOU: 22.0, HEALTH_PICKS: 3.0}

# Record: (t, seq, person or -1, campaign, channel, segment, zone, signals, event_age, flags).
Record = tuple[float, int, int, int, str, str, str, tuple[str, ...], int | None, int]
Line = dict[str, Any]


def _table(weights: dict[int, float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Choices and their cumulative weights, for bisect."""
    return tuple(weights), tuple(itertools.accumulate(weights.values()))


def _web_table(state: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The web campaigns for a state: returning | health << 1 | cart << 2 | ordered << 3."""
    weights = dict(WEB_BASE)
    for bit, extra in enumerate((WEB_RETURNING, WEB_HEALTH, WEB_CART, WEB_ORDERED)):
        if state >> bit & 1:
            weights.update(extra)
    return _table(weights)


WEB_TABLES = tuple(_web_table(state) for state in range(16))
GUEST_TABLE = _table(GUEST)
# A guest has no account: no purchases, no cart, no financial data; what the browser shows
# (the pages of this visit, where the address is, cookies matched with bought data) remains.
GUEST_UNKNOWN = frozenset({"purchase_history", "cart", "financial"})


def _variant_table(
    variants: Sequence[Variant],
) -> tuple[tuple[tuple[tuple[str, ...], int], ...], tuple[float, ...]]:
    return (
        tuple((signals, flags) for _, signals, flags in variants),
        tuple(itertools.accumulate(weight for weight, _, _ in variants)),
    )


VARIANT_TABLES = tuple(_variant_table(campaign.variants) for campaign in CAMPAIGNS)
GUEST_VARIANT_TABLES = {
    c: _variant_table([v for v in CAMPAIGNS[c].variants if not GUEST_UNKNOWN & set(v[1])])
    for c in GUEST
}
HOURLY_CUMULATIVE = tuple(itertools.accumulate(HOURLY))


class _Traffic:
    """The people, what each one has going on (a cart, an order), and the messages due."""

    def __init__(self, people: int, days: int, seed: int, start: datetime) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.start = start.timestamp()
        self.end = self.start + days * DAY
        self.days = days
        rng = random.Random(seed)
        self.random = rng.random
        self.pending: list[Record] = []
        self.seq = itertools.count()

        zones = sorted({zone for _, zone, _ in MARKETS})
        first = start.astimezone(UTC).date() - timedelta(days=1)
        # hours[zone][d + 1][h]: the epoch time of local hour h on day d (day 0: start's date).
        self.hours: dict[str, list[list[float]]] = {}
        for name in zones:
            zone = ZoneInfo(name)
            self.hours[name] = [
                [
                    datetime(day.year, day.month, day.day, h, tzinfo=zone).timestamp()
                    for h in range(24)
                ]
                for day in (first + timedelta(days=d) for d in range(days + 4 + FOLLOW_UP_DAYS))
            ]
        self.weekday0 = first.weekday()

        market_cumulative = tuple(itertools.accumulate(weight for _, _, weight in MARKETS))
        self.zone: list[str] = []
        self.segment: list[str] = []
        self.market: list[int] = []
        self.rate: list[float] = []  # sessions a day
        self.state: list[int] = []  # returning | health << 1 (cart and order bits are added)
        self.gpc: list[int] = []
        self.email: list[bool] = []
        self.app: list[bool] = []
        for _ in range(people):
            market = bisect.bisect(market_cumulative, rng.random() * market_cumulative[-1])
            path, zone_name, _ = MARKETS[market]
            activity = min(rng.paretovariate(1.1), 60.0)
            returning = rng.random() < 0.35 + 0.1 * min(activity, 5.0)
            health = rng.random() < 0.08
            kind = ("returning/vip" if activity >= 15 else "returning") if returning else "new"
            # One string per segment, not one per person.
            segment = sys.intern(f"{path}/{kind}")
            self.zone.append(zone_name)
            self.segment.append(segment)
            self.market.append(market)
            self.rate.append(0.1 * activity)
            self.state.append(returning | health << 1)
            self.gpc.append(GPC if rng.random() < 0.1 else 0)
            self.email.append(rng.random() < 0.3 + 0.1 * min(activity, 5.0))
            self.app.append(rng.random() < 0.1 + 0.06 * min(activity, 5.0))
        self.cart_at = [0.0] * people
        self.ordered_at = [0.0] * people
        self.left_at = [0.0] * people
        self.guest_segments = [path for path, _, _ in MARKETS]
        self.guest_zones = [zone for _, zone, _ in MARKETS]

    def records(self) -> Iterator[Record]:
        """Every message of the trace, in order of `t`."""
        pending = self.pending
        for d in range(-1, self.days + 2):
            # Each zone's local day d, where it overlaps the trace.
            overlaps = {
                zone: hours[d + 1][0] < self.end and hours[d + 2][0] > self.start
                for zone, hours in self.hours.items()
            }
            for p, zone in enumerate(self.zone):
                if overlaps[zone]:
                    self.person_day(p, d, self.hours[zone])
            # Whatever later days make comes after the first midnight of day d + 1 anywhere.
            watermark = min(hours[d + 2][0] for hours in self.hours.values())
            pending.sort()
            cut = bisect.bisect_left(pending, watermark, key=_time)
            yield from pending[:cut]
            del pending[:cut]
        pending.sort()
        yield from pending

    def person_day(self, p: int, d: int, hours: list[list[float]]) -> None:
        """Person p's messages that local day d of their zone sets off."""
        rnd = self.random
        today = hours[d + 1]
        weekday = (self.weekday0 + d + 1) % 7
        made = len(self.pending)

        sessions = _poisson(self.rate[p] * WEEKLY[weekday], rnd)
        for start in sorted([_local_time(today, rnd) for _ in range(sessions)]):
            # A person has one visit at a time: a new one starts a while after the last ended.
            self.left_at[p] = self.session(p, d, hours, max(start, self.left_at[p] + 600))

        if self.email[p]:
            blast = EMAIL_ROTA[weekday]
            if blast is not None and (blast != LOYALTY or self.state[p] & 1):
                self.add(today[9] + rnd() * 1800, p, blast, "email")
            if weekday == HEALTH_EMAIL_DAY and self.state[p] & 2:
                self.add(today[9] + rnd() * 1800, p, HEALTH_PICKS, "email")
        if self.app[p]:
            if rnd() < 0.5:
                self.add(today[19] + rnd() * 600, p, PUSH_ROTA[weekday], "push")
            if rnd() < 0.05 * WEEKLY[weekday]:
                t = today[10 + int(rnd() * 10)] + rnd() * HOUR
                self.add(t, p, STORE_NEARBY, "push", int(30 + rnd() * 570))

        made = len(self.pending) - made
        chance = ANONYMOUS_SHARE / (1 - ANONYMOUS_SHARE)
        market = self.market[p]
        for _ in range(made):
            if rnd() < chance:
                self.add_guest(_local_time(today, rnd), market)

    def session(self, p: int, d: int, hours: list[list[float]], t: float) -> float:
        """A visit: a few pages about a minute apart, each showing one personalized message.

        Returns when it ended.
        """
        rnd = self.random
        pages = 1
        while rnd() < 0.7 and pages < 40:
            pages += 1
        cart_at = self.cart_at
        if cart_at[p] and t - cart_at[p] > 7 * DAY:
            cart_at[p] = 0.0
        filled = 0.0
        viewed = t
        for page in range(pages):
            if page:
                viewed = t
                t += 8 + rnd() * 140
            ordered = self.ordered_at[p] > 0 and t - self.ordered_at[p] < 14 * DAY
            state = self.state[p] | (cart_at[p] > 0) << 2 | ordered << 3
            choices, cumulative = WEB_TABLES[state]
            campaign = choices[bisect.bisect(cumulative, rnd() * cumulative[-1])]
            age = None
            if campaign == ABANDONED_CART:
                age = int(t - cart_at[p])
            elif campaign == FOR_YOU and page:
                age = int(t - viewed)
            self.add(t, p, campaign, "web", age)
            if not cart_at[p]:
                if rnd() < 0.07:
                    cart_at[p] = filled = t
            elif rnd() < 0.06:
                self.purchase(p, d, hours, t)
                filled = 0.0
        if filled:
            self.abandoned(p, filled, t)
        return t

    def abandoned(self, p: int, filled: float, left: float) -> None:
        """A cart left behind: a push soon, an email within hours, a reminder the next day."""
        rnd = self.random
        if self.app[p] and rnd() < 0.7:
            t = left + 1200 + rnd() * 1500
            self.add(t, p, ABANDONED_CART, "push", int(t - filled))
        if self.email[p] and rnd() < 0.8:
            t = left + HOUR + rnd() * 2 * HOUR
            self.add(t, p, ABANDONED_CART, "email", int(t - filled))
            if rnd() < 0.5:
                t = left + DAY + (rnd() - 0.5) * 2 * HOUR
                self.add(t, p, ABANDONED_CART, "email", int(t - filled))

    def purchase(self, p: int, d: int, hours: list[list[float]], t: float) -> None:
        """An order: confirmed at once, shipped the next day, delivered two to four days on."""
        rnd = self.random
        self.cart_at[p] = 0.0
        self.ordered_at[p] = t
        self.add(t + 20 + rnd() * 60, p, ORDER_UPDATE, "email")
        self.add(hours[d + 2][9] + rnd() * 8 * HOUR, p, ORDER_UPDATE, "email")
        delivered = hours[d + 3 + int(rnd() * 3)][8] + rnd() * 5 * HOUR
        self.add(delivered, p, ORDER_UPDATE, "push" if self.app[p] else "email")

    def add(self, t: float, p: int, campaign: int, channel: str, age: int | None = None) -> None:
        """One message to person p, built one of its campaign's ways."""
        rnd = self.random
        ways, cumulative = VARIANT_TABLES[campaign]
        signals, flags = ways[bisect.bisect(cumulative, rnd() * cumulative[-1])]
        if rnd() < CAMPAIGNS[campaign].explained:
            flags |= EXPLAINED
        t = round(t, 3)
        if self.start <= t < self.end:
            self.pending.append(
                (
                    t,
                    next(self.seq),
                    p,
                    campaign,
                    channel,
                    self.segment[p],
                    self.zone[p],
                    signals,
                    age,
                    flags | self.gpc[p],
                )
            )

    def add_guest(self, t: float, market: int) -> None:
        """A web message to a visitor who is not signed in."""
        rnd = self.random
        choices, cumulative = GUEST_TABLE
        campaign = choices[bisect.bisect(cumulative, rnd() * cumulative[-1])]
        ways, weights = GUEST_VARIANT_TABLES[campaign]
        signals, flags = ways[bisect.bisect(weights, rnd() * weights[-1])]
        if rnd() < CAMPAIGNS[campaign].explained:
            flags |= EXPLAINED
        if rnd() < 0.1:
            flags |= GPC
        t = round(t, 3)
        if self.start <= t < self.end:
            self.pending.append(
                (
                    t,
                    next(self.seq),
                    -1,
                    campaign,
                    "web",
                    self.guest_segments[market],
                    self.guest_zones[market],
                    signals,
                    None,
                    flags,
                )
            )


def _time(record: Record) -> float:
    return record[0]


def _poisson(mean: float, rnd: Callable[[], float]) -> int:
    """Knuth's method: fine for the small means of sessions a day."""
    limit = math.exp(-mean)
    count = 0
    product = rnd()
    while product > limit:
        count += 1
        product *= rnd()
    return count


def _local_time(today: list[float], rnd: Callable[[], float]) -> float:
    """A moment of the local day, by the daily curve."""
    hour = bisect.bisect(HOURLY_CUMULATIVE, rnd() * HOURLY_CUMULATIVE[-1])
    return today[hour] + rnd() * HOUR


def generate(
    people: int,
    days: int,
    seed: int,
    start: datetime = DEFAULT_START,
    messages: int | None = None,
) -> Iterator[Line]:
    """The trace's messages, in order, as the dicts its lines hold.

    - `people`: how many signed-in people the shop has (guests come on top).
    - `days`: how long the trace runs, from `start` (a time; without a zone, UTC).
    - `seed`: the same seed gives the same messages.
    - `messages`: stop after this many.

    ```python
    for line in generate(people=1000, days=1, seed=1, messages=10):
        print(line["t"], line["person"], line["campaign"])
    ```
    """
    if people < 1:
        raise ValueError(f"people must be at least 1, got {people}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if messages is not None and messages < 0:
        raise ValueError(f"messages must be at least 0, got {messages}")
    return _lines(_Traffic(people, days, seed, start), messages)


def _lines(traffic: _Traffic, messages: int | None) -> Iterator[Line]:
    if messages == 0:
        return
    width = max(5, len(str(len(traffic.zone))))
    person_id = f"p-%0{width}d"
    for count, record in enumerate(traffic.records(), 1):
        t, _, p, c, channel, segment, zone, signals, age, flags = record
        campaign = CAMPAIGNS[c]
        line: Line = {
            "t": t,
            "person": person_id % (p + 1) if p >= 0 else None,
            "campaign": campaign.name,
        }
        if channel != "web":
            line["channel"] = channel
        line["segment"] = segment
        if signals:
            line["signals"] = list(signals)
        if age is not None:
            line["event_age"] = age
        if flags & INFERRED:
            line["inferred"] = True
        if flags & THIRD_PARTY:
            line["third_party"] = True
        if flags & EXPLAINED:
            line["explained"] = True
        if campaign.transactional:
            line["transactional"] = True
        line["tags"] = list(campaign.tags)
        line["zone"] = zone
        if flags & GPC:
            line["gpc"] = True
        yield line
        if count == messages:
            return


def write(lines: Iterator[Line], out: TextIO) -> None:
    """Write the lines to `out`, one JSON object a line."""
    encode = json.JSONEncoder(check_circular=False).encode
    for chunk in iter(lambda: list(itertools.islice(lines, 4096)), []):
        out.write("".join([encode(line) + "\n" for line in chunk]))


def _start(text: str) -> datetime:
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time; write it as 2026-11-02 or 2026-11-02T06:00+01:00"
        ) from None
    return start if start.tzinfo else start.replace(tzinfo=UTC)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a trace of a shop's personalized messages as JSON lines, sorted "
        "by time, for `throttle simulate`.",
    )
    parser.add_argument("--people", type=_positive, default=10_000, help="signed-in people")
    parser.add_argument("--days", type=_positive, default=7, help="days the trace covers")
    parser.add_argument("--seed", type=int, default=1, help="the same seed, the same trace")
    parser.add_argument(
        "--start",
        type=_start,
        default=DEFAULT_START,
        help="when the trace starts: a date or ISO 8601 time, UTC unless it says (2026-11-02)",
    )
    parser.add_argument("--messages", type=_positive, help="stop after this many lines")
    parser.add_argument("--out", help="write to this file instead of standard output")
    args = parser.parse_args(argv)
    lines = generate(args.people, args.days, args.seed, args.start, args.messages)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            write(lines, out)
        return 0
    try:
        write(lines, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (head, less) stopped reading: stop quietly, as other command-line tools do,
        # and keep Python from complaining again when it flushes standard output at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
