"""The production store: per-person state in Redis, one round trip per decision or less.

Each decision runs `lua/deliver.lua` by its SHA on the person's key, which is hash-tagged
(`prefix{pseudonym}`) so everything about one person sits in one cluster slot and erasure is
one DEL. Decisions made while an earlier batch is on the wire are coalesced: the next batch
goes out as one write of every EVALSHA plus the segment-audience HyperLogLog commands, and
comes back as one read. Each script still runs atomically, so caps stay exact.
"""

from __future__ import annotations

import asyncio
import hashlib
from importlib import resources
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from throttle.store.base import Delivery, Limits, Outcome, Verdict

_SCRIPT = resources.files("throttle.store").joinpath("lua/deliver.lua").read_text("utf-8")
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()
# RESP for `EVALSHA <sha> 1`, the start of every decision's command.
_EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n" + _SCRIPT_SHA + b"\r\n$1\r\n1\r\n"
_LIMITS_CACHE_SIZE = 4096


class RedisStore:
    """State in Redis at `url` (`redis://`, `rediss://` or `unix://`), keys under `prefix`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "throttle:",
        max_connections: int = 8,
        connect_timeout: float = 1.0,
        socket_timeout: float = 5.0,
    ) -> None:
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            decode_responses=False,
        )
        self._client: aioredis.Redis = aioredis.Redis.from_pool(self._pool)
        self.prefix = prefix
        self._encoded_limits: dict[Limits, tuple[int, bytes]] = {}
        self._pending: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    def person_key(self, person: str) -> str:
        return f"{self.prefix}{{{person}}}"

    def audience_key(self, segment: str) -> str:
        return f"{self.prefix}audience:{segment}"

    async def deliver(self, delivery: Delivery) -> Outcome:
        call = _Call(delivery, asyncio.get_running_loop().create_future())
        self._pending.append(call)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await call.future

    async def _flush(self) -> None:
        # One batch on the wire at a time; decisions arriving meanwhile form the next batch.
        try:
            while self._pending:
                batch = [call for call in self._pending if not call.future.done()]
                self._pending = []
                if batch:
                    await self._send(batch)
        finally:
            self._flusher = None

    async def _send(self, batch: list[_Call]) -> None:
        try:
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except Exception as error:
            _fail(batch, error)
            return
        try:
            answers, sizes = await self._exchange(connection, batch)
        except BaseException as error:
            await connection.disconnect()
            _fail(batch, error if isinstance(error, Exception) else ConnectionError("cancelled"))
            if not isinstance(error, Exception):
                raise
            return
        finally:
            await self._pool.release(connection)
        for call, answer in zip(batch, answers, strict=True):
            if call.future.done():
                continue
            if isinstance(answer, Exception):
                call.future.set_exception(answer)
                continue
            verdict, cap_index, score, repetitions = answer
            outcome_sizes = {s: sizes[s] for s in call.delivery.count_segments}
            call.future.set_result(
                Outcome(Verdict(verdict), cap_index, score, repetitions, outcome_sizes)
            )

    async def _exchange(
        self, connection: AbstractConnection, batch: list[_Call]
    ) -> tuple[list[Any], dict[str, int]]:
        """One write, one read: every script call of the batch, then its audience commands."""
        audiences, audience_replies, counted = self._audience_commands(batch)
        payload = b"".join(self._evalsha(call.delivery) for call in batch) + audiences
        await connection.send_packed_command(payload, check_health=False)
        answers = [await _reply(connection) for _ in batch]
        for _ in range(audience_replies):
            await _reply(connection)
        sizes = {segment: int(await _reply(connection)) for segment in counted}
        forgotten = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if forgotten:
            # Redis restarted or was flushed: load the script again, resend what it refused.
            await connection.send_command("SCRIPT", "LOAD", _SCRIPT, check_health=False)
            await _reply(connection)
            payload = b"".join(self._evalsha(batch[i].delivery) for i in forgotten)
            await connection.send_packed_command(payload, check_health=False)
            for i in forgotten:
                answers[i] = await _reply(connection)
        return answers, sizes

    def _audience_commands(self, batch: list[_Call]) -> tuple[bytes, int, list[str]]:
        """PFADD and PEXPIRE per segment the batch counts people into, PFCOUNT per one it asks."""
        members: dict[str, list[str]] = {}
        counted: dict[str, None] = {}
        for call in batch:
            delivery = call.delivery
            if delivery.segment:
                members.setdefault(delivery.segment, []).append(delivery.person)
            counted.update(dict.fromkeys(delivery.count_segments))
        if not members and not counted:
            return b"", 0, []
        window = str(batch[0].delivery.limits.audience_window_ms)
        commands: list[bytes] = []
        for segment, people in members.items():
            key = self.audience_key(segment)
            commands.append(_command(b"PFADD", key, *people))
            commands.append(_command(b"PEXPIRE", key, window, "NX"))
        commands += (_command(b"PFCOUNT", self.audience_key(s)) for s in counted)
        return b"".join(commands), 2 * len(members), list(counted)

    def _evalsha(self, delivery: Delivery) -> bytes:
        encoded = self._encoded_limits.get(delivery.limits)
        if encoded is None:
            if len(self._encoded_limits) >= _LIMITS_CACHE_SIZE:
                self._encoded_limits.clear()
            arguments = _limit_arguments(delivery.limits)
            encoded = (len(arguments), b"".join(_bulk(a.encode()) for a in arguments))
            self._encoded_limits[delivery.limits] = encoded
        count, limits = encoded
        return b"".join(
            (
                b"*%d\r\n" % (count + 6),
                _EVALSHA,
                _bulk(self.person_key(delivery.person).encode()),
                _bulk(b"%d" % delivery.now_ms),
                _bulk(b"%d" % delivery.score_milli),
                limits,
            )
        )

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for segment in segments:
            pipe.pfcount(self.audience_key(segment))
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
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._client.aclose()


class _Call:
    __slots__ = ("delivery", "future")

    def __init__(self, delivery: Delivery, future: asyncio.Future[Outcome]) -> None:
        self.delivery = delivery
        self.future = future


async def _reply(connection: AbstractConnection) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as error:  # an error reply: the connection is still in step
        return error


def _fail(batch: list[_Call], error: Exception) -> None:
    for call in batch:
        if not call.future.done():
            call.future.set_exception(error)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(name: bytes, *arguments: str) -> bytes:
    return (
        b"*%d\r\n" % (len(arguments) + 1)
        + _bulk(name)
        + b"".join(_bulk(a.encode()) for a in arguments)
    )


def _limit_arguments(limits: Limits) -> list[str]:
    """ARGV[3] onwards of deliver.lua: what is the same for every message under these limits."""
    repetition, budget = limits.repetition, limits.budget
    arguments: list[int | str] = [
        limits.ttl_ms,
        limits.threshold_milli,
        repetition.counter if repetition else "",
        repetition.weight_milli if repetition else 0,
        repetition.window_ms if repetition else 0,
        repetition.saturation if repetition else 0,
        budget.limit_milli if budget else -1,
        budget.window_ms if budget else 0,
        budget.entries if budget else 0,
        len(limits.counters),
    ]
    for counter in limits.counters:
        arguments += (counter.name, counter.keep, counter.window_ms, len(counter.caps))
        for cap in counter.caps:
            arguments += (cap.index, cap.limit, cap.window_ms)
    return [str(argument) for argument in arguments]
