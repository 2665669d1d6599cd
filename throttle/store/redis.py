"""The production store: per-person state in Redis, one round trip per decision or less.

Each decision runs `lua/deliver.lua` by its SHA on the person's key, which is hash-tagged
(`prefix{pseudonym}`) so everything about one person sits in one cluster slot and erasure is
one DEL. Decisions made in the same event-loop tick are coalesced: one write carries every
EVALSHA and the segment-audience HyperLogLog commands, and one read brings the replies back.
Each script still runs atomically, so caps stay exact.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

import msgpack
import redis.asyncio as aioredis

from throttle.errors import DecisionRefused, StoreUnavailable
from throttle.store.base import Delivery, Limits, Outcome, Verdict
from throttle.store.pipe import Pipe, bulk, command, reply_error

_SCRIPT = resources.files("throttle.store").joinpath("lua/deliver.lua").read_text("utf-8")
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()
# `EVALSHA <sha> 1 <key> <now> <score> <limits> <periods>`: eight arguments, three fixed.
_EVALSHA = b"*8\r\n" + bulk(b"EVALSHA") + bulk(_SCRIPT_SHA) + bulk(b"1")
_SCRIPT_LOAD = command(b"SCRIPT", b"LOAD", _SCRIPT.encode())
_LIMITS_CACHE_SIZE = 4096
_VERDICTS = tuple(Verdict)
_NO_SIZES: Mapping[str, int] = MappingProxyType({})


class RedisStore:
    """State in Redis at `url` (`redis://`, `rediss://` or `unix://`), keys under `prefix`.

    `stall_limit`: a connection that has not answered for this long is dropped and reopened.
    """

    # Several processes read its state, so their pseudonyms must come from one shared secret.
    shared = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "throttle:",
        connect_timeout: float = 1.0,
        stall_limit: float = 5.0,
    ) -> None:
        self._pipe = Pipe(url, connect_timeout=connect_timeout)
        # redis-py serves everything off the decision path (access, erasure, script loading).
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=stall_limit
        )
        self.prefix = prefix
        self._key_prefix = f"{prefix}{{".encode()
        self._stall_limit = stall_limit
        self._encoded_limits: dict[Limits, bytes] = {}
        self._pending: list[_Call] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def person_key(self, person: str) -> str:
        return f"{self.prefix}{{{person}}}"

    def audience_key(self, segment: str) -> str:
        return f"{self.prefix}audience:{segment}"

    async def deliver(self, delivery: Delivery) -> Outcome:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        call = _Call(delivery, loop.create_future())
        self._pending.append(call)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await call.future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        # Each decision gets its answer, or an error, within the policy's timeout from the
        # moment it was queued: connecting, reloading the script and all.
        timeout = batch[0].delivery.limits.timeout_ms / 1000
        deadline = asyncio.get_running_loop().call_later(timeout, _expire, batch, timeout)
        if self._pipe.ready and self._pipe.oldest_wait() < self._stall_limit:
            self._send(batch, deadline)
        else:
            self._background(self._prepare_then_send(batch, deadline, self._reconnect))

    async def _reconnect(self) -> None:
        if self._pipe.ready:  # ready but stalled: Redis stopped answering this connection
            self._pipe.abort(TimeoutError(f"no answer for {self._stall_limit:.0f} s"))
        await self._pipe.connect()

    async def _reload_script(self) -> None:
        await self._pipe.connect()
        (loaded,) = await self._pipe.send(_SCRIPT_LOAD, 1)
        if (error := reply_error(loaded)) is not None:
            raise error

    async def _prepare_then_send(
        self,
        calls: list[_Call],
        deadline: asyncio.TimerHandle,
        preparation: Callable[[], Awaitable[None]],
    ) -> None:
        """Connect, or reload the script, then send; a failure fails the calls at once."""
        try:
            await preparation()
        except BaseException as error:
            _fail(calls, _store_error(error))
            deadline.cancel()
            if not isinstance(error, Exception):
                raise
            return
        self._send(calls, deadline)

    def _send(self, batch: list[_Call], deadline: asyncio.TimerHandle) -> None:
        batch = [call for call in batch if not call.future.done()]
        if not batch:
            deadline.cancel()
            return
        audiences, audience_replies, counted = self._audience_commands(batch)
        payload = b"".join(self._evalsha(call.delivery) for call in batch) + audiences
        try:
            replies = self._pipe.send(payload, len(batch) + audience_replies + len(counted))
        except ConnectionError as error:  # lost since it was found ready
            _fail(batch, error)
            deadline.cancel()
            return
        replies.add_done_callback(functools.partial(self._settle, batch, counted, deadline))

    def _settle(
        self,
        batch: list[_Call],
        counted: list[str],
        deadline: asyncio.TimerHandle,
        replies: asyncio.Future[list[Any]],
    ) -> None:
        try:
            forgotten = self._answer(batch, counted, replies)
        except Exception as error:  # an answer of a shape we never sent for: fail, never hang
            forgotten = []
            _fail(batch, error)
        if forgotten:
            # Redis restarted or was flushed: load the script again, resend what it refused.
            # The deadline stays armed for them.
            self._background(self._prepare_then_send(forgotten, deadline, self._reload_script))
        else:
            deadline.cancel()

    def _answer(
        self, batch: list[_Call], counted: list[str], replies: asyncio.Future[list[Any]]
    ) -> list[_Call]:
        if (error := replies.exception()) is not None:
            _fail(batch, error)
            return []
        values = replies.result()
        counts = values[len(values) - len(counted) :] if counted else []
        # A count Redis could not give (an error reply) is unknown: the segment's parent stands in.
        sizes = {s: count for s, count in zip(counted, counts, strict=True) if type(count) is int}
        forgotten = []
        for call, answer in zip(batch, values, strict=False):
            future = call.future
            if future.done():
                continue
            if type(answer) is not list:  # an error reply
                if str(answer).startswith("NOSCRIPT"):
                    forgotten.append(call)
                else:
                    future.set_exception(DecisionRefused(str(answer)))
                continue
            verdict, cap_index, score, repetitions = answer
            asked = call.delivery.count_segments
            future.set_result(
                Outcome(
                    _VERDICTS[verdict],
                    cap_index,
                    score,
                    repetitions,
                    {s: sizes[s] for s in asked if s in sizes} if asked else _NO_SIZES,
                )
            )
        return forgotten

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _audience_commands(self, batch: list[_Call]) -> tuple[bytes, int, list[str]]:
        """PFADD and PEXPIRE per segment the batch counts people into, PFCOUNT per one it asks."""
        members: dict[str, list[bytes]] = {}
        counted: dict[str, None] = {}
        for call in batch:
            delivery = call.delivery
            for segment in delivery.audiences:
                members.setdefault(segment, []).append(delivery.person.encode())
            if delivery.count_segments:
                counted.update(dict.fromkeys(delivery.count_segments))
        if not members and not counted:
            return b"", 0, []
        window = b"%d" % batch[0].delivery.limits.audience_window_ms
        commands: list[bytes] = []
        for segment, people in members.items():
            key = self.audience_key(segment).encode()
            commands.append(command(b"PFADD", key, *people))
            commands.append(command(b"PEXPIRE", key, window, b"NX"))
        commands += (command(b"PFCOUNT", self.audience_key(s).encode()) for s in counted)
        return b"".join(commands), 2 * len(members), list(counted)

    def _evalsha(self, delivery: Delivery) -> bytes:
        limits = self._encoded_limits.get(delivery.limits)
        if limits is None:
            if len(self._encoded_limits) >= _LIMITS_CACHE_SIZE:
                self._encoded_limits.clear()
            limits = self._encoded_limits[delivery.limits] = bulk(_packed(delivery.limits))
        key = self._key_prefix + delivery.person.encode() + b"}"
        now = b"%d" % delivery.now_ms
        score = b"%d" % delivery.score_milli
        periods = b"%d %d %d" % delivery.period_starts if delivery.period_starts else b""
        return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
            _EVALSHA,
            len(key),
            key,
            len(now),
            now,
            len(score),
            score,
            limits,
            len(periods),
            periods,
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
        stored: dict[str, Any] = msgpack.unpackb(raw, raw=False)
        base = stored.pop("t", 0)
        state: dict[str, Any] = {}
        if "c" in stored:
            state["c"] = {name: [base + t for t in log] for name, log in stored["c"].items()}
        if "b" in stored:
            state["b"] = [[base + t, score] for t, score in stored["b"]]
        return state

    async def erase(self, person: str) -> bool:
        return bool(await self._client.delete(self.person_key(person)))

    async def aclose(self) -> None:
        self._closed = True
        _fail(self._pending, StoreUnavailable("the store is closed"))
        self._pending = []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pipe.aclose()
        await self._client.aclose()


class _Call:
    __slots__ = ("delivery", "future")

    def __init__(self, delivery: Delivery, future: asyncio.Future[Outcome]) -> None:
        self.delivery = delivery
        self.future = future


def _expire(batch: list[_Call], timeout: float) -> None:
    _fail(batch, TimeoutError(f"no answer within {timeout * 1000:.0f} ms"))


def _store_error(error: BaseException) -> Exception:
    return error if isinstance(error, Exception) else StoreUnavailable("the store is closed")


def _fail(batch: list[_Call], error: BaseException) -> None:
    for call in batch:
        if not call.future.done():
            call.future.set_exception(error)


def _packed(limits: Limits) -> bytes:
    """ARGV[3] of deliver.lua: what is the same for every message under these limits."""
    repetition, budget = limits.repetition, limits.budget
    packed: bytes = msgpack.packb(
        [
            limits.ttl_ms,
            limits.threshold_milli,
            repetition.counter if repetition else "",
            repetition.weight_milli if repetition else 0,
            repetition.window_ms if repetition else 0,
            repetition.saturation if repetition else 0,
            budget.limit_milli if budget else -1,
            budget.window_ms if budget else 0,
            budget.entries if budget else 0,
            [
                [
                    c.name,
                    c.keep,
                    c.window_ms,
                    [[k.index, k.limit, k.window_ms, k.period] for k in c.caps],
                    int(c.shadow),
                ]
                for c in limits.counters
            ],
            int(limits.shadow_caps),
        ]
    )
    return packed
