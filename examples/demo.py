"""`make demo`: the storefront with throttle in front, and a short scripted visit.

Uses Redis at REDIS_URL (default redis://127.0.0.1:6379/0) when one answers, else the embedded
memory store. Prints who got personalized or segment content, and why.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis
import uvicorn
from http_sfv.item import Item

from examples.storefront import PASSWORD, create_app

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Visit:
    who: str | None
    path: str
    times: int = 1
    gpc: bool = False
    note: str = ""


VISITS = [
    Visit("ana", "/offers/recommended", 5, note="the campaign's daily cap is 3"),
    Visit("ben", "/offers/nearby", note="precise location, 1 minute ago"),
    Visit("cleo", "/offers/for-you", gpc=True, note="inferred data; her browser sends Sec-GPC: 1"),
    Visit(None, "/offers/recommended", note="not signed in"),
    Visit("dev", "/orders/latest", 4, note="a receipt: transactional"),
    Visit("ben", "/", note="not personalized at all"),
]


async def choose_store() -> tuple[str, str | None, str]:
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.3)
    try:
        await client.ping()
    except Exception as error:
        return (
            "memory://",
            None,
            f"no Redis answered at {url} ({type(error).__name__}), so: memory://",
        )
    finally:
        await client.aclose()
    # A fresh key for every run: this run's pseudonyms match nothing an earlier run left.
    return url, secrets.token_hex(32), f"Redis at {url}, with a fresh secret generated for this run"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def describe(response: httpx.Response) -> tuple[str, str, str, str]:
    value = response.headers.get("personalization-decision")
    if value is None:
        return "-", "(unmarked)", "", ""
    item = Item()
    item.parse(value.encode())
    params = dict(item.params)
    score = params.get("score")
    return (
        str(item.value),
        str(params.get("reason", "")),
        str(params.get("rule", "")),
        (f"{float(score):.2f}" if score is not None else ""),
    )


async def visit(base_url: str) -> None:
    row = "{:<6} {:<21} {:<13} {:<18} {:<20} {:>5}  {}"
    print(row.format("who", "path", "outcome", "reason", "rule", "score", "what they got"))
    print("-" * 118)
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        for planned in VISITS:
            auth = (planned.who, PASSWORD) if planned.who else None
            headers = {"Sec-GPC": "1"} if planned.gpc else {}
            for _ in range(planned.times):
                response = await http.get(planned.path, auth=auth, headers=headers)
                outcome, reason, rule, score = describe(response)
                body = response.text if len(response.text) <= 60 else response.text[:57] + "..."
                print(row.format(planned.who or "(anon)", planned.path, outcome, reason, rule,
                                 score, body))  # fmt: skip
            if planned.note:
                print(f"{'':<6} {'':<21} ^ {planned.note}")


async def show_store(store: str, secret: str | None) -> None:
    if secret is None:
        print("State lived in this process's memory and is gone with it.")
        return
    client = aioredis.Redis.from_url(store)
    try:
        keys = [key async for key in client.scan_iter(match="throttle:{*}")]
        print(f"Person keys in Redis: {len(keys)}, named by keyed hashes, never by user ids:")
        for key in keys[:3]:
            ttl = await client.pttl(key)
            print(f"  {key.decode()}  expires by itself in {ttl / 3_600_000:.1f} h")
    finally:
        await client.aclose()


async def main() -> int:
    store, secret, why = await choose_store()
    print("throttle demo: the storefront in examples/storefront.py, policy policies/default.toml")
    print(f"store: {why}\n")
    app = create_app(store=store, secret=secret)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    for _ in range(500):  # up to 5 s
        if server.started or serving.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        print("the storefront did not start", file=sys.stderr)
        return 1
    try:
        await visit(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)
    print()
    await show_store(store, secret)
    print(
        "\nThe Personalization-Decision header on each response says what happened and why.\n"
        "Explore yourself:\n"
        "  .venv/bin/python -m uvicorn --factory examples.storefront:create_app\n"
        "  curl -i -u ana:demo http://127.0.0.1:8000/offers/recommended"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
