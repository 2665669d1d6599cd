"""The production store: per-person state in Redis, one round trip per decision.

Each decision is one pipeline: EVALSHA of `lua/deliver.lua` on the person's key, plus the
segment-audience HyperLogLog commands. The person's key is hash-tagged (`prefix{pseudonym}`)
so everything about one person sits in one cluster slot and erasure is one DEL.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from throttle.store.base import Delivery, Outcome, Verdict

_SCRIPT = resources.files("throttle.store").joinpath("lua/deliver.lua").read_text("utf-8")
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


class RedisStore:
    """State in Redis at `url` (`redis://`, `rediss://` or `unix://`), keys under `prefix`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "throttle:",
        max_connections: int = 32,
        connect_timeout: float = 1.0,
    ) -> None:
        # Decisions beyond `max_connections` wait for a free connection (bounded by the
        # engine's timeout) instead of opening one each: Redis does better with few sockets.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_connect_timeout=connect_timeout,
            decode_responses=False,
        )
        self._client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self.prefix = prefix

    def person_key(self, person: str) -> str:
        return f"{self.prefix}{{{person}}}"

    def audience_key(self, segment: str) -> str:
        return f"{self.prefix}audience:{segment}"

    async def deliver(self, delivery: Delivery) -> Outcome:
        # The pipeline is sent raw: redis-py's pipelined Script objects would first ask
        # SCRIPT EXISTS, a second round trip on every decision. NOSCRIPT is handled below.
        pipe = self._client.pipeline(transaction=False)
        key = self.person_key(delivery.person)
        pipe.execute_command("EVALSHA", _SCRIPT_SHA, 1, key, *_script_arguments(delivery))
        if delivery.segment:
            audience = self.audience_key(delivery.segment)
            pipe.execute_command("PFADD", audience, delivery.person)
            pipe.execute_command("PEXPIRE", audience, delivery.audience_window_ms, "NX")
        for segment in delivery.count_segments:
            pipe.execute_command("PFCOUNT", self.audience_key(segment))
        results = await pipe.execute(raise_on_error=False)
        answer = results[0]
        if isinstance(answer, NoScriptError):
            # Redis restarted or was flushed: load the script again and retry this call alone.
            await self._client.script_load(_SCRIPT)
            answer = await self._client.evalsha(_SCRIPT_SHA, 1, key, *_script_arguments(delivery))
        for result in (answer, *results[1:]):
            if isinstance(result, Exception):
                raise result
        counts = results[len(results) - len(delivery.count_segments) :]
        verdict, cap_index, score, repetitions = answer
        sizes = dict(zip(delivery.count_segments, counts, strict=True)) if counts else {}
        return Outcome(Verdict(verdict), cap_index, score, repetitions, sizes)

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for segment in segments:
            pipe.execute_command("PFCOUNT", self.audience_key(segment))
        counts = await pipe.execute()
        return dict(zip(segments, counts, strict=True))

    async def state(self, person: str) -> dict[str, Any] | None:
        raw = await self._client.get(self.person_key(person))
        if raw is None:
            return None
        decoded: dict[str, Any] = msgpack.unpackb(raw, raw=False)
        return decoded

    async def erase(self, person: str) -> bool:
        return bool(await self._client.delete(self.person_key(person)))

    async def aclose(self) -> None:
        await self._client.aclose()


def _script_arguments(delivery: Delivery) -> list[int | str]:
    repetition = delivery.repetition
    budget = delivery.budget
    arguments: list[int | str] = [
        delivery.now_ms,
        delivery.ttl_ms,
        delivery.score_milli,
        delivery.threshold_milli,
        repetition.counter if repetition else "",
        repetition.weight_milli if repetition else 0,
        repetition.window_ms if repetition else 0,
        repetition.saturation if repetition else 0,
        budget.limit_milli if budget else -1,
        budget.window_ms if budget else 0,
        budget.entries if budget else 0,
        len(delivery.counters),
    ]
    for counter in delivery.counters:
        arguments += (counter.name, counter.keep, counter.window_ms, len(counter.caps))
        for cap in counter.caps:
            arguments += (cap.index, cap.limit, cap.window_ms)
    return arguments
