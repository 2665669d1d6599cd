"""`make demo`: the storefront with throttle in front of it, and a short scripted visit.

Uses Redis at REDIS_URL (default redis://127.0.0.1:6379/0) when it answers, else the embedded
memory store. Prints, for each request, what throttle decided and why.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis
import uvicorn
from http_sfv.item import Item

from examples.storefront import PASSWORD, PROFILES, create_app
from throttle import (
    DECISION_HEADER,
    Decision,
    Marker,
    MemoryStore,
    Reason,
    RedisStore,
    Store,
    ThrottleClient,
    load_policy,
)

POLICY = "policies/default.toml"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PING_TIMEOUT = 0.3


@dataclass(frozen=True)
class Visit:
    who: str | None  # None: not signed in
    path: str
    times: int
    story: str
    gpc: bool = False


VISITS = [
    Visit("ana", "/offers/recommended", 5, "ana, 5 times: the campaign's daily cap is 3"),
    Visit("ben", "/offers/nearby", 1, "ben: an offer from his precise location, a minute ago"),
    Visit("cleo", "/offers/for-you", 1, "cleo: inferred data; she sends Sec-GPC: 1", gpc=True),
    Visit(None, "/offers/recommended", 1, "a guest, not signed in"),
    Visit("dev", "/orders/latest", 4, "dev: his receipt, a message he asked for"),
    Visit("ben", "/", 1, "ben: the home page, not personalized at all"),
]

ROW = "{:<6}  {:<19}  {:<12}  {:<16}  {:<27}  {:>5}  {}"
EXCERPT = 44
LEGEND = """\
Each line is one request. From its Personalization-Decision response header:
  outcome  personalized: the handler's response went out as it was;
           segment: generic content for a group large enough to hide the person replaced it;
           -: the response was not marked as personalized, so throttle left it alone
  reason   why, one of:
{reasons}
  rule     the policy rule that decided, when one did
  score    how creepy the message is, from 0 to 1: above {threshold} is too creepy, and each
           earlier delivery of the same campaign adds {repetition}
"""
# Every reason with its words, from the one vocabulary the header and the reports use.
REASONS = "\n".join(f"             {reason.value:<19} {reason.label}" for reason in Reason)


@dataclass(frozen=True)
class StoreChoice:
    store: str | Store
    secret: str | None
    why: str
    redis_url: str | None = None
    prefix: str = ""


async def choose_store() -> StoreChoice:
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    try:
        async with asyncio.timeout(PING_TIMEOUT + 0.2):
            client = aioredis.Redis.from_url(
                url, socket_connect_timeout=PING_TIMEOUT, socket_timeout=PING_TIMEOUT
            )
            try:
                await client.ping()
            finally:
                await client.aclose()
    except Exception as error:
        why = f"no Redis answered at {url} ({type(error).__name__}), so: memory://"
        return StoreChoice("memory://", None, why)
    # A fresh secret and key prefix for every run: nothing an earlier run left counts here.
    prefix = f"throttle-demo:{secrets.token_hex(4)}:"
    why = (
        f"Redis at {url}, with a fresh secret generated for this run.\n"
        f"       User ids reach Redis only as keyed hashes (pseudonyms), under {prefix}*,\n"
        "       and every key expires on its own."
    )
    return StoreChoice(RedisStore(url, prefix=prefix), secrets.token_hex(32), why, url, prefix)


def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # port 0: any free one
    return sock


def describe(response: httpx.Response) -> tuple[str, str, str, str]:
    """(outcome, reason, rule, score) from the response's decision header."""
    value = response.headers.get(DECISION_HEADER)
    if value is None:
        return "-", "(unmarked)", "", ""
    decision = Item()
    decision.parse(value.encode())
    params = decision.params
    score = params.get("score")
    return (
        str(decision.value),
        str(params.get("reason", "")),
        str(params.get("rule", "")),
        "" if score is None else f"{score:.3f}",
    )


def excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


async def visit(base_url: str) -> None:
    print(ROW.format("who", "path", "outcome", "reason", "rule", "score", "what they got"))
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        for planned in VISITS:
            print(f"-- {planned.story}")
            auth = (planned.who, PASSWORD) if planned.who else None
            headers = {"Sec-GPC": "1"} if planned.gpc else {}
            for _ in range(planned.times):
                response = await http.get(planned.path, auth=auth, headers=headers)
                response.raise_for_status()
                who = planned.who or "(anon)"
                row = (who, planned.path, *describe(response), excerpt(response.text))
                print(ROW.format(*row))


async def consent_visit(base_url: str) -> None:
    """dev's health-related offer: refused until he gives explicit consent, and after he
    withdraws it."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5, auth=("dev", PASSWORD)) as http:

        async def offer(story: str) -> None:
            response = await http.get("/offers/wellness")
            outcome, reason, rule, _ = describe(response)
            print(f"   {story}: {outcome} ({reason}{', ' + rule if rule else ''})")

        print("-- dev: an offer built on his health data, a special category (GDPR Art. 9)")
        await offer("before consent")
        given = (await http.put("/privacy/consents/health")).json()
        print(f"   PUT /privacy/consents/health: consented since {given['since']}")
        await offer("with his explicit consent")
        await http.delete("/privacy/consents/health")
        print("   DELETE /privacy/consents/health: withdrawn")
        await offer("after withdrawing it")


def said(decision: Decision) -> str:
    rule = f", {decision.rule}" if decision.rule else ""
    return f"{decision.outcome} ({decision.reason.value}{rule})"


async def email_visit(base_url: str, client: ThrottleClient) -> None:
    """dev gets the spring sale on the web and by email: the campaign's daily cap of 3 counts
    both channels, the web app's middleware and the email worker's client alike."""
    print("-- dev: the spring sale on the web and by email, from a worker's ThrottleClient;")
    print("   the campaign's cap of 3 a day counts both channels together")
    email = Marker(
        campaign="spring-sale",
        channel="email",
        segment=PROFILES["dev"].segment,
        signals=("purchase_history",),
        explained=True,
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=5, auth=("dev", PASSWORD)) as http:

        async def web() -> None:
            outcome, reason, rule, _ = describe(await http.get("/offers/recommended"))
            rule = f", {rule}" if rule else ""
            print(f"   web    /offers/recommended: {outcome} ({reason}{rule})")

        await web()
        await web()
        failed = await client.reserve("dev", email)
        # The mail server refuses it: the reservation is released, its slot given back.
        await client.release(failed)
        print(f"   email  reserved ({said(failed.decision)}); the send failed: released")
        print(f"   email  preflight, nothing counted: {said(await client.preflight('dev', email))}")
        async with client.reserving("dev", email) as sent:
            print(f"   email  reserved, sent, committed: {said(sent.decision)}")
        await web()
        refused = await client.preflight("dev", email)
        print(f"   email  preflight: {said(refused)}: the email is not built")


async def privacy_visit(base_url: str) -> None:
    """ana uses the privacy routes: why, level off, a copy of her data, erasure."""
    auth = ("ana", PASSWORD)
    async with httpx.AsyncClient(base_url=base_url, timeout=5, auth=auth) as http:
        print("-- ana asks why she saw what she saw: GET /privacy/why")
        decisions = (await http.get("/privacy/why")).json()["decisions"]
        # The newest decision, and the newest one that went the other way.
        newest = decisions[0]
        other_way = [d for d in decisions if d["outcome"] != newest["outcome"]][:1]
        for explained in (newest, *other_way):
            print(f"   {explained['summary']}")
            for factor in explained["factors"]:
                print(f"     {factor['contribution']:+.3f}  {factor['words']}")
        print('-- ana turns personalization off: PUT /privacy/level {"level": "off"}')
        chosen = (await http.put("/privacy/level", json={"level": "off"})).json()
        print(f"   level {chosen['level']}: {chosen['meaning']}")
        for path in ("/offers/recommended", "/orders/latest"):
            response = await http.get(path)
            outcome, reason, rule, _ = describe(response)
            print(f"   {path}: {outcome} ({reason}, {rule}) {excerpt(response.text)}")
        print("-- ana asks for a copy of her data: GET /privacy/data")
        held = (await http.get("/privacy/data")).json()
        counted = ", ".join(f"{name}: {len(times)}" for name, times in held["deliveries"].items())
        print(
            f"   pseudonym {held['pseudonym'][:12]}..., level {held['level']['level']}, "
            f"{len(held['recent_decisions'])} recent decisions, "
            f"{len(held['audit_trail']['entries'])} audit entries; deliveries counted ({counted})"
        )
        print("-- ana erases it: DELETE /privacy/data")
        erased = (await http.delete("/privacy/data")).json()
        deleted = erased["deleted"]
        print(
            f"   deleted: state {deleted['state']}, {deleted['recent_decisions']} recent "
            "decisions, and the token that named her in the audit trail (its entries are "
            "unlinked)"
        )
        after = (await http.get("/privacy/data")).json()
        left = (
            len(after["deliveries"])
            + len(after["recent_decisions"])
            + len(after["audit_trail"]["entries"])
        )
        print(f"   afterwards: {left} items held, level {after['level']['level']} (the default)")


async def show_keys_and_clean_up(url: str, prefix: str) -> None:
    """What this run left in Redis, then none of it: the demo cleans up after itself."""
    client = aioredis.Redis.from_url(url, socket_timeout=1)
    try:
        keys = sorted([key.decode() async for key in client.scan_iter(match=f"{prefix}{{*")])
        print(
            f"Person keys in Redis: {len(keys)} (each person's record, the choices of those "
            "who made some, and an erasure's tombstone, its time for 10 minutes), named by a "
            "keyed hash, never by the user id:"
        )
        for key in keys:
            hours = await client.pttl(key) / 3_600_000
            print(f"  {key}  expires on its own in {hours:.1f} h")
        ours = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if ours:
            await client.delete(*ours)
        print(f"Removed this run's {len(ours)} keys (prefix {prefix}).")
    finally:
        await client.aclose()


async def serve_and_visit(choice: StoreChoice) -> None:
    # The email worker's client shares the web app's store and secret: one cap per person.
    store = MemoryStore() if isinstance(choice.store, str) else choice.store
    secret = choice.secret or secrets.token_hex(32)
    app = create_app(store=store, secret=secret, policy=POLICY)
    client = ThrottleClient(policy=POLICY, store=store, secret=secret)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    sock = loopback_socket()
    host, port = sock.getsockname()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # up to 5 s
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("the storefront did not start")
        await visit(f"http://{host}:{port}")
        print()
        await consent_visit(f"http://{host}:{port}")
        await email_visit(f"http://{host}:{port}", client)
        await privacy_visit(f"http://{host}:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)
        sock.close()
        await store.aclose()  # closed at lifespan shutdown, unless none ran


async def main() -> int:
    print("throttle demo: a storefront (examples/storefront.py) behind ThrottleMiddleware,")
    print(f"with the policy in {POLICY}\n")
    choice = await choose_store()
    print(f"store: {choice.why}\n")
    creepiness = load_policy(POLICY).creepiness
    print(
        LEGEND.format(
            reasons=REASONS,
            threshold=creepiness.threshold,
            repetition=creepiness.repetition.weight,
        )
    )
    await serve_and_visit(choice)
    print()
    if choice.redis_url is not None:
        await show_keys_and_clean_up(choice.redis_url, choice.prefix)
        print()
    print(
        "Explore: .venv/bin/python -m uvicorn --factory examples.storefront:create_app, then"
        " curl -i -u ana:demo http://127.0.0.1:8000/offers/recommended"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
