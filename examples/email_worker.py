"""An email worker that sends personalized offers within the caps the web app counts.

The web app and this worker use the same policy, Redis and secret, so a person's caps and
creepiness budget are one across both: two web offers and one email use up a cap of three a
day, whichever comes first. Each email is reserved before it is sent, committed once the
outbox took it and released when the send failed, so a failed send costs the person nothing
and a crashed worker's reservation stops counting after its hold.

Run it with arq (`pip install 'throttle-asgi[worker]'`), on the Redis the app uses:

    THROTTLE_SECRET=... THROTTLE_STORE=redis://127.0.0.1:6379/0 \\
        arq examples.email_worker.WorkerSettings

and queue a job from the app: `await arq_pool.enqueue_job("send_offer_email", user_id,
"spring-sale")`. Or send one email from the command line, no arq needed (this is how the
tests run it, in a process of its own):

    THROTTLE_SECRET=... python -m examples.email_worker --store redis://127.0.0.1:6379/0 \\
        --outbox outbox.jsonl ana spring-sale

"Sending" appends the email to the outbox, a file of JSON lines: a stand-in for SMTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from throttle import Marker, Reservation, StoreUnavailable, ThrottleClient, ThrottleError

logger = logging.getLogger(__name__)

POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.toml"
# How long an email's reservation counts while the send is under way, at most.
HOLD_SECONDS = 120.0


class Outbox:
    """Where emails go: one JSON line each. A path that cannot be written fails the send."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def send(self, to: str, subject: str, body: str) -> None:
        line = json.dumps({"to": to, "subject": subject, "body": body})
        with self.path.open("a", encoding="utf-8") as outbox:
            outbox.write(line + "\n")


def personalized_email(person: str, campaign: str) -> tuple[str, str]:
    # Built only once throttle said yes: the preflight spares the work when it would not.
    return f"{person}, picked for you", f"Our {campaign} picks, chosen from what you bought."


def segment_email(campaign: str) -> tuple[str, str]:
    return "This week's best sellers", f"Our {campaign} best sellers, the same for everyone."


async def send_offer_email(
    ctx: dict[str, Any], person: str, campaign: str, *, signals: tuple[str, ...] = ()
) -> str:
    """The job: email `person` the campaign's offer, personalized if throttle allows it, else
    the same email everyone gets. Returns the outcome: personalized, segment or failed."""
    client: ThrottleClient = ctx["throttle"]
    outbox: Outbox = ctx["outbox"]
    message = Marker(campaign=campaign, channel="email", signals=tuple(signals))
    if (await client.preflight(person, message)).delivers_personalized:
        reservation = await client.reserve(person, message, hold=HOLD_SECONDS)
        if reservation.allowed:
            subject, body = personalized_email(person, campaign)
            try:
                outbox.send(person, subject, body)
            except OSError:
                await client.release(reservation)  # the cap's slot goes back at once
                return "failed"
            await _commit(client, reservation)
            return "personalized"
        if reservation.held:  # counted for content about its category, which we do not send
            await client.release(reservation)
    subject, body = segment_email(campaign)
    try:
        outbox.send(person, subject, body)
    except OSError:
        return "failed"
    return "segment"


async def _commit(client: ThrottleClient, reservation: Reservation) -> None:
    """Keep the sent email's reservation; a store that does not answer is asked again, since
    a reservation never committed stops counting when its hold runs out."""
    for attempt in range(3):
        try:
            await client.commit(reservation)
            return
        except StoreUnavailable:
            if attempt == 2:
                logger.warning("the email was sent but its reservation could not be committed")
                return
            await asyncio.sleep(1.0 + attempt)


def _client() -> ThrottleClient:
    """The client on the web app's policy, store and secret, from the environment."""
    return ThrottleClient(
        policy=os.environ.get("THROTTLE_POLICY", str(POLICY)),
        store=os.environ.get("THROTTLE_STORE", "redis://127.0.0.1:6379/0"),
        secret=os.environ.get("THROTTLE_SECRET"),
    )


async def startup(ctx: dict[str, Any]) -> None:
    ctx["throttle"] = _client()
    ctx["outbox"] = Outbox(os.environ.get("THROTTLE_OUTBOX", "outbox.jsonl"))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["throttle"].aclose()


try:
    from arq.connections import RedisSettings
except ImportError:  # the command line below needs no arq
    pass
else:

    class WorkerSettings:
        """`arq examples.email_worker.WorkerSettings`: jobs queue on the Redis throttle uses."""

        functions = (send_offer_email,)
        on_startup = startup
        on_shutdown = shutdown
        redis_settings = RedisSettings.from_dsn(
            os.environ.get("THROTTLE_STORE", "redis://127.0.0.1:6379/0")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send one offer email through throttle.")
    parser.add_argument("person")
    parser.add_argument("campaign")
    parser.add_argument("--signal", action="append", default=[], dest="signals")
    parser.add_argument("--store", help="the web app's store (default: THROTTLE_STORE)")
    parser.add_argument("--policy", help="the web app's policy (default: THROTTLE_POLICY)")
    parser.add_argument("--outbox", default="outbox.jsonl")
    arguments = parser.parse_args(argv)
    for name, value in (("THROTTLE_STORE", arguments.store), ("THROTTLE_POLICY", arguments.policy)):
        if value is not None:
            os.environ[name] = value

    async def run() -> str:
        ctx: dict[str, Any] = {}
        await startup(ctx)
        ctx["outbox"] = Outbox(arguments.outbox)
        try:
            return await send_offer_email(
                ctx, arguments.person, arguments.campaign, signals=tuple(arguments.signals)
            )
        finally:
            await shutdown(ctx)

    try:
        outcome = asyncio.run(run())
    except ThrottleError as error:  # a policy, store or secret that cannot be used
        print(f"email_worker: {error}", file=sys.stderr)
        return 2
    print(outcome)
    return 1 if outcome == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
