"""The production store: per-person state in Redis, one round trip per decision or less.

Each decision runs `lua/deliver.lua` by its SHA on the person's key, which is hash-tagged
(`prefix{pseudonym}`) so everything about one person sits in one cluster slot and erasure is
one DEL. Decisions made in the same event-loop tick are coalesced: one write carries every
EVALSHA and the segment-audience HyperLogLog commands, and one read brings the replies back.
Each script still runs atomically, so caps stay exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from throttle.errors import DecisionRefused, StoreUnavailable
from throttle.store.base import (
    AuditLimits,
    Choice,
    Delivery,
    Erasure,
    Limits,
    Outcome,
    Verdict,
)
from throttle.store.pipe import Pipe, bulk, command, reply_error

logger = logging.getLogger("throttle")

_SCRIPT = resources.files("throttle.store").joinpath("lua/deliver.lua").read_text("utf-8")
_CHOOSE = resources.files("throttle.store").joinpath("lua/choose.lua").read_text("utf-8")
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()
# `EVALSHA <sha> 2 <state> <choices> <now> <score> <limits> <periods> <flags> <special>
# <relevance>`: twelve arguments, three fixed.
_EVALSHA = b"*12\r\n" + bulk(b"EVALSHA") + bulk(_SCRIPT_SHA) + bulk(b"2")
_SCRIPT_LOAD = command(b"SCRIPT", b"LOAD", _SCRIPT.encode())
_LIMITS_CACHE_SIZE = 4096
_VERDICTS = tuple(Verdict)
_FLAGS = tuple(bulk(b"%d" % flags) for flags in range(8))
_NO_SPECIAL_NO_RELEVANCE = bulk(b"") + bulk(b"-1")
_NO_SIZES: Mapping[str, int] = MappingProxyType({})
# Audit entries waiting for a connection; beyond this many the oldest are dropped (and counted).
_MAX_PENDING_AUDIT = 10_000
# The stream is trimmed by age at most this often (by length at every append).
_TRIM_EVERY_SECONDS = 60.0
_SCAN_BATCH = 1000
# How long an audit entry waits for a decision's write to carry it before it goes alone.
_AUDIT_LINGER_SECONDS = 0.05


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
        self._choose = self._client.register_script(_CHOOSE)
        self._audit_key = f"{prefix}audit".encode()
        self._audit_pending: list[tuple[str, bytes, AuditLimits]] = []
        # Choices recorded without waiting, as ready commands (rare: a first GPC opt-out).
        self._notes: list[tuple[str, bytes]] = []  # (pseudonym, command)
        self._encoded_audit: dict[AuditLimits, tuple[bytes, bytes, bytes]] = {}
        self._audit_scheduled = False
        self._audit_dropped = 0
        self._trimmed_at = 0.0

    def person_key(self, person: str) -> str:
        return f"{self.prefix}{{{person}}}"

    def choices_key(self, person: str) -> str:
        """The person's choices (level, consents, GPC opt-out): beside their state, same slot,
        kept as long as they come back rather than as long as a window."""
        return f"{self.prefix}{{{person}}}:choices"

    def recent_key(self, person: str) -> str:
        """The person's recent decisions: a list beside their state, in the same slot."""
        return f"{self.prefix}{{{person}}}:recent"

    @property
    def audit_key(self) -> str:
        return self._audit_key.decode()

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
        # The audit entries of earlier decisions ride along: no round trip of their own.
        audit, audit_replies = self._audit_commands()
        payload = audit + b"".join(self._evalsha(call.delivery) for call in batch) + audiences
        try:
            replies = self._pipe.send(
                payload, audit_replies + len(batch) + audience_replies + len(counted)
            )
        except ConnectionError as error:  # lost since it was found ready
            _fail(batch, error)
            deadline.cancel()
            return
        replies.add_done_callback(
            functools.partial(self._settle, batch, counted, audit_replies, deadline)
        )

    def _settle(
        self,
        batch: list[_Call],
        counted: list[str],
        audit_replies: int,
        deadline: asyncio.TimerHandle,
        replies: asyncio.Future[list[Any]],
    ) -> None:
        try:
            if audit_replies and replies.exception() is None:
                values = replies.result()
                _report_audit_errors(values[:audit_replies])
                del values[:audit_replies]
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
            verdict, cap_index, score, repetitions, restricted, level = answer
            asked = call.delivery.count_segments
            future.set_result(
                Outcome(
                    _VERDICTS[verdict],
                    cap_index,
                    score,
                    repetitions,
                    {s: sizes[s] for s in asked if s in sizes} if asked else _NO_SIZES,
                    restricted == 1,
                    level,
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
        keys = bulk(key) + bulk(key + b":choices")
        now = b"%d" % delivery.now_ms
        score = b"%d" % delivery.score_milli
        periods = b"%d %d %d" % delivery.period_starts if delivery.period_starts else b""
        flags = _FLAGS[delivery.minimal_ok + 2 * delivery.transactional + 4 * delivery.gpc_forbids]
        rest = (
            bulk(" ".join(delivery.special).encode()) + bulk(b"%d" % delivery.relevance_milli)
            if delivery.special or delivery.relevance_milli >= 0
            else _NO_SPECIAL_NO_RELEVANCE
        )
        return b"%s%s$%d\r\n%s\r\n$%d\r\n%s\r\n%s$%d\r\n%s\r\n%s%s" % (
            _EVALSHA,
            keys,
            len(now),
            now,
            len(score),
            score,
            limits,
            len(periods),
            periods,
            flags,
            rest,
        )

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for segment in segments:
            pipe.pfcount(self.audience_key(segment))
        counts = await pipe.execute()
        return dict(zip(segments, counts, strict=True))

    async def state(self, person: str) -> dict[str, Any] | None:
        async with _unavailable_on_error():
            await self._write_pending_now()
            raw, raw_choices = await self._client.mget(
                self.person_key(person), self.choices_key(person)
            )
        state: dict[str, Any] = {}
        if raw is not None:
            stored: dict[str, Any] = msgpack.unpackb(raw, raw=False)
            base = stored.pop("t", 0)
            if "c" in stored:
                state["c"] = {name: [base + t for t in log] for name, log in stored["c"].items()}
            if "b" in stored:
                state["b"] = [[base + t, score] for t, score in stored["b"]]
        if raw_choices is not None:
            state["p"] = dict(msgpack.unpackb(raw_choices, raw=False))
        return state or None

    async def choose(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        async with _unavailable_on_error():
            await self._choose(
                keys=[self.choices_key(person)],
                args=[choice.kind, choice.value, now_ms, keep_ms],
            )

    def note(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        if self._closed:
            return
        if choice.kind == "touch":
            # Renewing needs no script: PEXPIRE leaves a key that does not exist alone.
            written = command(b"PEXPIRE", self.choices_key(person).encode(), b"%d" % keep_ms)
            self._notes.append((person, written))
            self._schedule_side_writes()
            return
        # EVAL rather than EVALSHA: written with the next write, it cannot meet NOSCRIPT.
        written = command(
            b"EVAL",
            _CHOOSE.encode(),
            b"1",
            self.choices_key(person).encode(),
            choice.kind.encode(),
            str(choice.value).encode(),
            b"%d" % now_ms,
            b"%d" % keep_ms,
        )
        self._notes.append((person, written))
        self._schedule_side_writes()

    def record(self, person: str, entry: bytes, limits: AuditLimits) -> None:
        if self._closed:
            return
        pending = self._audit_pending
        pending.append((person, entry, limits))
        if len(pending) > _MAX_PENDING_AUDIT:
            del pending[0]
            self._audit_dropped += 1
        self._schedule_side_writes()

    def _schedule_side_writes(self) -> None:
        if not self._audit_scheduled:
            # The next decision's write usually carries the entry; when none comes, this does.
            self._audit_scheduled = True
            asyncio.get_running_loop().call_later(_AUDIT_LINGER_SECONDS, self._flush_audit)

    def _flush_audit(self) -> None:
        self._audit_scheduled = False
        if self._closed or not (self._audit_pending or self._notes):
            return
        if not self._pipe.ready:
            self._background(self._connect_then_flush())
            return
        audit, count = self._audit_commands()
        try:
            replies = self._pipe.send(audit, count)
        except ConnectionError:
            return
        replies.add_done_callback(_audit_written)

    def _audit_parts(self, limits: AuditLimits) -> tuple[bytes, bytes, bytes]:
        """What every entry's commands share under these limits, encoded once: the XADD up to
        the person, and the ends of LTRIM and PEXPIRE after the person's key."""
        parts = self._encoded_audit.get(limits)
        if parts is None:
            xadd = b"*10\r\n" + b"".join(
                bulk(argument)
                for argument in (
                    b"XADD", self._audit_key, b"MAXLEN", b"~", b"%d" % limits.max_entries,
                    b"*", b"p",
                )
            )  # fmt: skip
            parts = (
                xadd,
                bulk(b"0") + bulk(b"%d" % (limits.per_person - 1)),
                bulk(b"%d" % limits.keep_ms),
            )
            self._encoded_audit = {limits: parts}  # one policy at a time
        return parts

    async def _connect_then_flush(self) -> None:
        try:
            await asyncio.wait_for(self._pipe.connect(), self._stall_limit)
        except Exception:  # kept for the next write: a decision reconnects and carries them
            return
        if self._pipe.ready:
            self._flush_audit()

    def _audit_commands(self) -> tuple[bytes, int]:
        """The waiting choices and audit entries as commands (XADD; LPUSH, LTRIM, PEXPIRE of the
        person's recent decisions), and how many replies they make."""
        commands = [note for _, note in self._notes]
        self._notes = []
        if not self._audit_pending:
            return b"".join(commands), len(commands)
        pending, self._audit_pending = self._audit_pending, []
        for person, entry, limits in pending:
            xadd, ltrim_tail, pexpire_tail = self._audit_parts(limits)
            who = person.encode()
            commands.append(xadd + bulk(who) + b"$1\r\nd\r\n" + bulk(entry))
            if person and limits.per_person:
                recent = bulk(self._key_prefix + who + b"}:recent")
                commands.append(b"*3\r\n$5\r\nLPUSH\r\n" + recent + bulk(entry))
                commands.append(b"*4\r\n$5\r\nLTRIM\r\n" + recent + ltrim_tail)
                commands.append(b"*3\r\n$7\r\nPEXPIRE\r\n" + recent + pexpire_tail)
        now = time.time()
        if now - self._trimmed_at >= _TRIM_EVERY_SECONDS:
            self._trimmed_at = now
            oldest = int(now * 1000) - pending[-1][2].max_age_ms
            commands.append(command(b"XTRIM", self._audit_key, b"MINID", b"~", b"%d" % oldest))
        if self._audit_dropped:
            logger.warning(
                "throttle: %d audit entries were dropped while the store was unavailable",
                self._audit_dropped,
            )
            self._audit_dropped = 0
        return b"".join(commands), len(commands)

    async def recent(self, person: str) -> list[bytes]:
        async with _unavailable_on_error():
            await self._write_pending_now()
            entries: Any = await self._client.lrange(self.recent_key(person), 0, -1)
        return list(entries)

    async def audit_entries(self, person: str) -> list[bytes]:
        async with _unavailable_on_error():
            await self._write_pending_now()
            return [entry for _, entry in await self._scan_audit(person)]

    async def _write_pending_now(self) -> None:
        """Write what waits (audit entries, noted choices) before reading: a person asking why,
        or what is held about them, sees the last of it."""
        if not (self._audit_pending or self._notes):
            return
        if not self._pipe.ready:
            await asyncio.wait_for(self._pipe.connect(), self._stall_limit)
        audit, count = self._audit_commands()
        _report_audit_errors(
            await asyncio.wait_for(self._pipe.send(audit, count), self._stall_limit)
        )

    async def _scan_audit(self, person: str) -> list[tuple[bytes, bytes]]:
        """(id, entry) of the person's entries in the trail, read in batches, oldest first."""
        wanted = person.encode()
        found: list[tuple[bytes, bytes]] = []
        start = b"-"
        while True:
            batch: Any = await self._client.xrange(
                self._audit_key, min=start, max=b"+", count=_SCAN_BATCH
            )
            for entry_id, fields in batch:
                if fields.get(b"p") == wanted:
                    found.append((entry_id, fields.get(b"d", b"")))
            if len(batch) < _SCAN_BATCH:
                return found
            start = b"(" + batch[-1][0]

    async def erase(self, person: str) -> Erasure:
        # What is still waiting to be written of theirs is dropped, not written after erasure.
        kept = [item for item in self._audit_pending if item[0] != person]
        waiting = len(self._audit_pending) - len(kept)
        self._audit_pending = kept
        self._notes = [note for note in self._notes if note[0] != person]
        async with _unavailable_on_error():
            pipe = self._client.pipeline(transaction=True)
            pipe.llen(self.recent_key(person))
            pipe.delete(self.person_key(person), self.choices_key(person))
            pipe.delete(self.recent_key(person))
            recent, state, _ = await pipe.execute()
            ids = [entry_id for entry_id, _ in await self._scan_audit(person)]
            removed = 0
            for start in range(0, len(ids), _SCAN_BATCH):
                chunk = ids[start : start + _SCAN_BATCH]
                removed += await self._client.xdel(self._audit_key, *chunk)
        return Erasure(
            state=bool(state), decisions=int(recent) + waiting, audit_entries=removed + waiting
        )

    async def aclose(self) -> None:
        self._closed = True
        _fail(self._pending, StoreUnavailable("the store is closed"))
        self._pending = []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if (self._audit_pending or self._notes) and self._pipe.ready:
            # The last decisions' entries go out before the connection does.
            audit, count = self._audit_commands()
            with contextlib.suppress(Exception):
                _report_audit_errors(await asyncio.wait_for(self._pipe.send(audit, count), 1.0))
        await self._pipe.aclose()
        await self._client.aclose()


class _Call:
    __slots__ = ("delivery", "future")

    def __init__(self, delivery: Delivery, future: asyncio.Future[Outcome]) -> None:
        self.delivery = delivery
        self.future = future


@contextlib.asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    """Redis failures off the decision path, as the one error callers handle."""
    try:
        yield
    except (RedisError, OSError) as error:
        raise StoreUnavailable(f"{type(error).__name__}: {error}") from error


def _audit_written(replies: asyncio.Future[list[Any]]) -> None:
    if replies.cancelled():
        return
    error = replies.exception()
    if error is not None:
        logger.warning("throttle: writing the audit trail failed: %s", error)
    else:
        _report_audit_errors(replies.result())


def _report_audit_errors(replies: list[Any]) -> None:
    for reply in replies:
        if (error := reply_error(reply)) is not None:
            logger.warning("throttle: writing the audit trail failed: %s", error)
            return


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
            limits.minimal_threshold_milli,
            limits.full_threshold_milli,
            limits.default_level,
            limits.keep_choice_ms,
            limits.trust_signed_in_milli,
            limits.trust_declared_milli,
            list(limits.lambda_milli),
        ]
    )
    return packed
