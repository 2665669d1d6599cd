"""The production store: one record per person in Redis, one command per decision.

Each decision runs `lua/deliver.lua` by its SHA on the person's record, whose key is
hash-tagged (`prefix{pseudonym}`) so everything about one person sits in one cluster slot and
erasure is one write (a DEL, and a short-lived tombstone that keeps other workers' waiting
writes from bringing the person back). The script also writes the decision into the person's
recent decisions, so the audit trail costs the decision path no command of its own. Decisions
made in the same event-loop tick are coalesced: one write carries every EVALSHA, the
segment-audience HyperLogLog commands and one XADD holding the audit entries that waited, and
one read brings the replies back. Each script still runs atomically, so caps stay exact.

Faults: an error reply about the server rather than one person's record (OOM, READONLY,
LOADING, ...) fails the batch as a store fault, like a lost connection. A batch is given up on
when Redis makes no progress for the policy's timeout, not when the event loop was merely busy.
After a failed connection, nothing here connects again for `retry_after`. A READONLY reply
drops the connection (a demoted master: the next one finds the new master through Sentinel).
With `replicas` in the policy, each batch ends with a WAIT; a batch too few replicas
acknowledged in time fails like a late one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from throttle.audit import pack_entry
from throttle.errors import DecisionRefused, StoreUnavailable
from throttle.faults import LogLimiter, StoreGuard
from throttle.store.base import (
    AuditLimits,
    Choice,
    Delivery,
    Erasure,
    Limits,
    Outcome,
    RecentTemplate,
    Verdict,
    fingerprint_of,
)
from throttle.store.layout import (
    RECENT_SIZE,
    DeliverArg,
    Flag,
    Limit,
    limits_format,
    numbers,
    script,
    sha1,
)
from throttle.store.pipe import Pipe, bulk, command, reply_error
from throttle.store.sentinel import connections_for

logger = logging.getLogger(__name__)

_DELIVER = script("deliver")
_CHOOSE = script("choose")
_REMEMBER = script("remember")
_SETTLE = script("settle")
_DELIVER_SHA, _REMEMBER_SHA = sha1(_DELIVER), sha1(_REMEMBER)
# `EVALSHA <sha> 2 <record> <choices> <ARGV...>`
_EVALSHA = b"*%d\r\n" % (5 + len(DeliverArg)) + bulk(b"EVALSHA") + bulk(_DELIVER_SHA) + bulk(b"2")
# The handshake of every decision-path connection: the scripts, loaded before any call.
LOAD_SCRIPTS = tuple(command(b"SCRIPT", b"LOAD", text.encode()) for text in (_DELIVER, _REMEMBER))
_CACHE_SIZE = 4096
_VERDICTS = tuple(Verdict)
_EMPTY = bulk(b"")
_NO_PERIODS = (0, 0, 0)
_NO_SIZES: Mapping[str, int] = MappingProxyType({})
# Audit entries and side writes waiting for a connection; beyond this many the oldest go.
_MAX_PENDING = 10_000
# The trail is trimmed by age, and its key's expiry renewed, at most this often.
_TRIM_EVERY_SECONDS = 60.0
# How long side writes (audit entries, decisions made without the store) wait for a decision's
# write to carry them before they go alone.
_SIDE_LINGER_SECONDS = 0.05
# A batch whose replies are still coming (Redis answers, only slowly) is given this many times
# the policy's timeout before it fails: a busy machine must not look like a dead Redis.
_PROGRESS_GRACE = 4
# Error replies about the server, not about one person's record: store faults.
_SERVER_ERRORS = (
    "OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "NOPERM", "MOVED", "ASK", "CROSSSLOT",
    "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "MISCONF", "NOAUTH", "WRONGPASS",
)  # fmt: skip
# The reply a cluster store gives the commands of a slot it cannot reach now: about that slot's
# people alone (their decisions are refused, their side writes kept for later).
SLOT_DOWN = "SLOTDOWN"
_TOKEN_BYTES = 8
# What many recent decisions share is written beside the records again this often per process,
# so that it outlives every record that names it.
_RECENT_PIECE_REFRESH_SECONDS = 60.0
# A piece written again by a reader is kept this long; the next decision's refresh sets it right.
_MENDED_PIECE_KEEP_MS = 86_400_000
# Pieces of recent decisions: a message's template, or one decision made without the store.
_TEMPLATE, _ENTRY = 1, 2
# How long an erasure's tombstone (`prefix{pseudonym}:erased`, its time) is kept, ms: the
# person's decisions made before it, still waiting in any worker, are not written after it.
# Such a write waits at most half of this (`_side_commands`: 50 ms normally, longer only in an
# outage); the other half covers one in flight and clocks that are a little apart. Short,
# because its key names the person's pseudonym.
TOMBSTONE_MS = 600_000

# A decision made without the store, waiting to be written: (pseudonym, its EVALSHA of
# remember.lua, its time in ms, what the trail gets once the script names the person's token,
# when it was made (monotonic)).
_Remembered = tuple[str, bytes, int, bytes | None, float]


class RedisStore:
    """State in Redis at `url` (`redis://`, `rediss://`, `unix://` or, with Sentinel,
    `redis+sentinel://`; see `throttle.store.sentinel`), keys under `prefix`.

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
        # redis-py serves everything off the decision path (access, erasure, choices).
        self._pipe, self._client = self._connections(
            url, connect_timeout=connect_timeout, stall_limit=stall_limit
        )
        self.prefix = prefix
        self._key_prefix = f"{prefix}{{".encode()
        self._stall_limit = stall_limit
        # The limits, counters and repetition counter as the script's arguments.
        self._encoded_limits: dict[Limits, bytes] = {}
        # A template's fingerprint, as an argument and as bytes.
        self._encoded_recent: dict[RecentTemplate, tuple[bytes, bytes]] = {}
        # Fingerprint -> when this process last wrote the piece it names (monotonic), and the
        # templates it knows by fingerprint (to mend a piece Redis lost, when a reader finds it).
        self._pieces_written: dict[bytes, float] = {}
        self._templates: dict[bytes, RecentTemplate] = {}
        self._pieces: list[bytes] = []  # SETs of pieces, waiting for the next write
        self._pending: list[_Call] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._choose = self._client.register_script(_CHOOSE)
        self._settle_script = self._client.register_script(_SETTLE)
        self._audit_key = f"{prefix}audit".encode()
        # The streams the trail is appended to, in turn (a cluster store spreads it over nodes).
        self._audit_keys: tuple[bytes, ...] = (self._audit_key,)
        self._piece_prefix = f"{prefix}recent:".encode()
        # Audit entries waiting for the next write, packed, and the trail's bounds.
        self._trail: list[bytes] = []
        self._trail_limits: AuditLimits | None = None
        # Decisions made without the store, waiting to be written.
        self._remembered: list[_Remembered] = []
        self._side_scheduled = False
        self._dropped = 0
        self._unlinked = 0  # decisions that waited too long to be linked to their person
        # How long an erasure's tombstone is kept, ms (`TOMBSTONE_MS`).
        self.tombstone_ms = TOMBSTONE_MS
        self._trimmed_at = -_TRIM_EVERY_SECONDS
        # Entries per append, for bounding the trail by entries while appends carry many.
        self._appended = 0
        self._appends = 0
        self._tokens = b""
        # After a failed connection nothing connects again before this (monotonic) time.
        self._retry_at = 0.0
        self.retry_after = 1.0
        # The engine's guard, which logs and counts store faults once per burst.
        self.guard: StoreGuard | None = None
        self._logs = LogLimiter(log=logger)
        # For metrics: told of each batch of decisions answered (how many, seconds since sent).
        self.on_batch: Callable[[int, float], None] | None = None

    @property
    def client(self) -> aioredis.Redis | aioredis.RedisCluster:
        """The redis-py client for work off the decision path (the ops state's writes)."""
        return self._client

    def _connections(
        self, url: str, *, connect_timeout: float, stall_limit: float
    ) -> tuple[Pipe, aioredis.Redis | aioredis.RedisCluster]:
        """The decision path's connection and the redis-py client (a cluster store has its own)."""
        return connections_for(
            url,
            connect_timeout=connect_timeout,
            socket_timeout=stall_limit,
            handshake=LOAD_SCRIPTS,
        )

    def attach(self, guard: StoreGuard) -> None:
        """Report faults met off the decision path (side writes) to the engine's guard."""
        self.guard = guard

    def cache_sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and bound of each of this process's caches, by name (for metrics)."""
        return {
            "store_limits": (len(self._encoded_limits), _CACHE_SIZE),
            "store_templates": (len(self._encoded_recent), _CACHE_SIZE),
            "store_pieces": (len(self._pieces_written), _CACHE_SIZE),
        }

    def person_key(self, person: str) -> str:
        """The person's record: counters, budget, audit token, recent decisions."""
        return f"{self.prefix}{{{person}}}"

    def choices_key(self, person: str) -> str:
        """The person's choices (level, consents, GPC opt-out): beside their record, same slot,
        kept as long as they come back rather than as long as a window."""
        return f"{self.prefix}{{{person}}}:choices"

    def tombstone_key(self, person: str) -> str:
        """The time of the person's last erasure, kept `tombstone_ms` in their slot: no
        decision made before it is written into their record after it. It holds no id."""
        return f"{self.prefix}{{{person}}}:erased"

    @property
    def audit_key(self) -> str:
        """The stream data requests by support staff are appended to: the trail's only stream,
        or the first of a cluster store's shards."""
        return self._audit_key.decode()

    @property
    def audit_keys(self) -> tuple[str, ...]:
        """The streams the audit trail is appended to: `audit_key`, or a cluster's shards."""
        return tuple(key.decode() for key in self._audit_keys)

    def audience_key(self, segment: str) -> str:
        return f"{self.prefix}audience:{segment}"

    def piece_key(self, fingerprint: bytes) -> bytes:
        """Where what many recent decisions share is kept once, by its fingerprint."""
        return self._piece_prefix + fingerprint.hex().encode()

    def _keep_piece(
        self, fingerprint: bytes, kind: int, data: bytes | RecentTemplate, keep_ms: int
    ) -> None:
        """Write a piece of recent decisions beside the records with the next write, unless
        this process did so lately."""
        now = time.monotonic()
        if now - self._pieces_written.get(fingerprint, -math.inf) < _RECENT_PIECE_REFRESH_SECONDS:
            return
        if len(self._pieces_written) >= _CACHE_SIZE:
            self._pieces_written.clear()
        self._pieces_written[fingerprint] = now
        packed = data.packed() if isinstance(data, RecentTemplate) else data
        piece = msgpack.packb([kind, packed], use_bin_type=True)
        self._pieces.append(
            command(b"SET", self.piece_key(fingerprint), piece, b"PX", b"%d" % keep_ms)
        )

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
        limits = batch[0].delivery.limits
        self.retry_after = limits.retry_after_ms / 1000
        # Each decision gets its answer, or an error, within the policy's timeout from the
        # moment it was queued (connecting, reloading the script and all), unless Redis is
        # visibly answering, only slowly.
        deadline = _Deadline(self._pipe, batch, limits.timeout_ms / 1000)
        if self._pipe.ready and self._pipe.oldest_wait() < self._stall_limit:
            self._send(batch, deadline)
        elif time.monotonic() < self._retry_at:
            deadline.fail(StoreUnavailable("Redis failed lately; retrying after retry_after"))
        else:
            self._background(self._prepare_then_send(batch, deadline, self._reconnect))

    async def _reconnect(self) -> None:
        if self._pipe.ready:
            if self._pipe.oldest_wait() < self._stall_limit:
                return  # another batch connected since this one found no connection
            # Ready but stalled: Redis stopped answering this connection.
            self._pipe.abort(TimeoutError(f"no answer for {self._stall_limit:.0f} s"))
        try:
            await self._pipe.connect()
        except BaseException:
            self._retry_at = time.monotonic() + self.retry_after
            raise
        # A new connection may be to a Redis that restarted empty: pieces are written again.
        self._pieces_written.clear()

    async def _reload_scripts(self) -> None:
        await self._pipe.connect()
        for loaded in await self._pipe.send(b"".join(LOAD_SCRIPTS), len(LOAD_SCRIPTS)):
            if (error := reply_error(loaded)) is not None:
                raise error
        self._pieces_written.clear()  # a Redis that lost its scripts lost its pieces too

    async def _prepare_then_send(
        self,
        calls: list[_Call],
        deadline: _Deadline,
        preparation: Callable[[], Awaitable[None]],
    ) -> None:
        """Connect, or reload the scripts, then send; a failure fails the calls at once."""
        try:
            await preparation()
        except BaseException as error:
            deadline.fail(_store_error(error))
            if not isinstance(error, Exception):
                raise
            return
        self._send(calls, deadline)

    def _send(self, batch: list[_Call], deadline: _Deadline) -> None:
        batch = [call for call in batch if not call.future.done()]
        if not batch:
            deadline.cancel()
            return
        try:
            audiences, audience_replies, counted = self._audience_commands(batch)
            decisions = b"".join([self._evalsha(call.delivery) for call in batch])
        except Exception as error:  # limits we cannot encode: fail now, never wait for the deadline
            deadline.fail(error)
            return
        # What waits on the side (audit entries, decisions made without the store, pieces of
        # recent decisions the scripts are about to name) rides along, ahead of the scripts.
        side, handlers = self._side_commands()
        limits = batch[0].delivery.limits
        # The stricter mode: the batch counts once `replicas` replicas hold it too.
        wait = _wait(limits.replicas, limits.timeout_ms) if limits.replicas else b""
        payload = side + decisions + audiences + wait
        try:
            replies = self._pipe.send(
                payload,
                len(handlers) + len(batch) + audience_replies + len(counted) + bool(wait),
            )
        except ConnectionError as error:  # lost since it was found ready
            self._requeue(handlers)
            deadline.fail(error)
            return
        deadline.batch = batch
        replies.add_done_callback(
            functools.partial(self._settle, batch, counted, handlers, limits.replicas, deadline)
        )

    def _settle(
        self,
        batch: list[_Call],
        counted: list[str],
        handlers: list[_SideReply],
        replicas: int,
        deadline: _Deadline,
        replies: asyncio.Future[list[Any]],
    ) -> None:
        try:
            if handlers:
                if replies.exception() is None:
                    values = replies.result()
                    self._side_written(handlers, values[: len(handlers)])
                    del values[: len(handlers)]
                else:
                    self._requeue(handlers)
            if self.on_batch is not None and replies.exception() is None:
                self.on_batch(len(batch), asyncio.get_running_loop().time() - deadline.started)
            forgotten = self._answer(batch, counted, replicas, replies)
        except Exception as error:  # an answer of a shape we never sent for: fail, never hang
            forgotten = []
            _fail(batch, error)
        if forgotten:
            # Redis restarted or was flushed: load the scripts again, resend what it refused.
            # The deadline stays armed for them.
            self._background(self._prepare_then_send(forgotten, deadline, self._reload_scripts))
        else:
            deadline.cancel()

    def _answer(
        self,
        batch: list[_Call],
        counted: list[str],
        replicas: int,
        replies: asyncio.Future[list[Any]],
    ) -> list[_Call]:
        if (error := replies.exception()) is not None:
            _fail(batch, error)
            return []
        values = replies.result()
        if replicas:
            held = values.pop()
            if type(held) is not int or held < replicas:
                # What the scripts counted may be lost in a failover: no one is personalized
                # on it (the counts stay, on the master: over-counting is the safe side).
                _fail(batch, _too_few(held, replicas))
                return []
        counts = values[len(values) - len(counted) :] if counted else []
        # A count Redis could not give (an error reply) is unknown: the segment's parent stands in.
        sizes = {s: count for s, count in zip(counted, counts, strict=True) if type(count) is int}
        forgotten = []
        for call, answer in zip(batch, values, strict=False):
            future = call.future
            if future.done():
                continue
            if type(answer) is not list:  # an error reply
                message = str(answer)
                if message.startswith("NOSCRIPT"):
                    forgotten.append(call)
                elif message.startswith(_SERVER_ERRORS):
                    self._leave_a_replica(message)
                    future.set_exception(StoreUnavailable(f"Redis: {message}"))
                else:
                    future.set_exception(DecisionRefused(message))
                continue
            verdict, cap_index, score, repetitions, restricted, level, token, reserved = answer
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
                    token.decode() if token else "",
                    reserved == 1,
                )
            )
        return forgotten

    def _leave_a_replica(self, message: str) -> None:
        """A READONLY reply: the master was demoted (a Sentinel failover). The connection is
        dropped so that the next one finds the new master."""
        if message.startswith("READONLY"):
            self._pipe.abort(ConnectionError(f"Redis is a replica now: {message}"))

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
            if len(self._encoded_limits) >= _CACHE_SIZE:
                self._encoded_limits.clear()
            limits = self._encoded_limits[delivery.limits] = _limit_arguments(delivery.limits)
        template = delivery.recent
        if template is None or not delivery.limits.recent_per_person:
            recent = token = _EMPTY
        else:
            known = self._encoded_recent.get(template)
            if known is None:
                if len(self._encoded_recent) >= _CACHE_SIZE:
                    self._encoded_recent.clear()
                    self._templates.clear()
                fingerprint = template.fingerprint
                known = self._encoded_recent[template] = (bulk(fingerprint), fingerprint)
                self._templates[fingerprint] = template
            recent, fingerprint = known
            self._keep_piece(fingerprint, _TEMPLATE, template, delivery.limits.recent_keep_ms)
            token = bulk(self._token())
        flags = (
            Flag.MINIMAL_OK * delivery.minimal_ok
            + Flag.TRANSACTIONAL * delivery.transactional
            + Flag.GPC_FORBIDS * delivery.gpc_forbids
            + Flag.GPC_NOW * delivery.gpc_now
            + Flag.QUIET * delivery.quiet
            + Flag.DRY_RUN * delivery.dry_run
            + Flag.RESERVE * (delivery.hold is not None)
        )
        call = numbers(
            [
                delivery.now_ms,
                delivery.score_milli,
                flags,
                delivery.relevance_milli,
                *(delivery.period_starts or _NO_PERIODS),
                delivery.hold.hold_ms if delivery.hold is not None else 0,
            ]
        )
        special = bulk(" ".join(delivery.special).encode()) if delivery.special else _EMPTY
        key = self._key_prefix + delivery.person.encode() + b"}"
        # One formatting for the whole command: it is made for every decision.
        hold = bulk(delivery.hold.id.encode()) if delivery.hold is not None else _EMPTY
        return b"%s$%d\r\n%s\r\n$%d\r\n%s:choices\r\n$%d\r\n%s\r\n%s%s%s%s%s" % (
            _EVALSHA,
            len(key),
            key,
            len(key) + 8,
            key,
            len(call),
            call,
            limits,
            special,
            recent,
            token,
            hold,
        )

    def _token(self) -> bytes:
        """A fresh random audit token, from a pool drawn from the OS now and then."""
        if not self._tokens:
            self._tokens = os.urandom(_TOKEN_BYTES * 512).hex().encode()
        token, self._tokens = (
            self._tokens[: 2 * _TOKEN_BYTES],
            self._tokens[2 * _TOKEN_BYTES :],
        )
        return token

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for segment in segments:
            pipe.pfcount(self.audience_key(segment))
        counts = await pipe.execute()
        return dict(zip(segments, counts, strict=True))

    async def state(self, person: str) -> dict[str, Any] | None:
        async with _unavailable_on_error():
            await self._write_pending_now()
            raw: Any
            raw, raw_choices = await self._client.mget(
                self.person_key(person), self.choices_key(person)
            )
            core = decode_record(raw)
            choices = msgpack.unpackb(raw_choices, raw=False) if raw_choices is not None else None
        state: dict[str, Any] = {}
        base = core.get("t", 0)
        if core.get("c"):
            state["c"] = {name: [base + t for t in log] for name, log in core["c"].items()}
        if core.get("b"):
            budget = core["b"]
            state["b"] = [[base + budget[i], budget[i + 1]] for i in range(0, len(budget) - 1, 2)]
        if isinstance(choices, dict) and choices:
            state["p"] = dict(choices)
        if isinstance(core.get("v"), dict):
            state["v"] = {
                held_id: [base + held[0], base + held[1], held[2], list(held[3:])]
                for held_id, held in core["v"].items()
                if isinstance(held, list)
                and all(type(n) is int for n in held[:3])
                and len(held) >= 3
            }
        return state or None

    async def settle(self, person: str, reservation: str, *, commit: bool, now_ms: int) -> bool:
        async with _unavailable_on_error():
            held: Any = await self._settle_script(
                keys=[self.person_key(person)], args=[reservation, int(commit), now_ms]
            )
        return bool(held == 1)

    async def recent(self, person: str) -> list[bytes]:
        async with _unavailable_on_error():
            await self._write_pending_now()
            raw: Any = await self._client.get(self.person_key(person))
            decisions = _recent_of(decode_record(raw))
            fingerprints = list(dict.fromkeys(fingerprint for _, fingerprint, _, _ in decisions))
            pieces: Any = (
                await self._get_many([self.piece_key(f) for f in fingerprints])
                if fingerprints
                else []
            )
        known = dict(zip(fingerprints, pieces, strict=True))
        for fingerprint, piece in known.items():
            template = self._templates.get(fingerprint)
            if piece is None and template is not None:
                # Redis lost it (a restart, a flush): this process knows it, and writes it again.
                known[fingerprint] = msgpack.packb(
                    [_TEMPLATE, template.packed()], use_bin_type=True
                )
                self._pieces_written.pop(fingerprint, None)
                self._keep_piece(fingerprint, _TEMPLATE, template, _MENDED_PIECE_KEEP_MS)
        entries = []
        for when, fingerprint, key, score in reversed(decisions):
            entry = _entry_of(known.get(fingerprint), when, key, score)
            if entry is not None:  # a piece gone (expired, flushed) takes its decision along
                entries.append(entry)
        return entries

    async def _get_many(self, keys: list[bytes]) -> list[Any]:
        values: list[Any] = await self._client.mget(keys)
        return values

    async def choose(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        async with _unavailable_on_error():
            await self._choose(
                keys=[self.choices_key(person)],
                args=[choice.kind, choice.value, now_ms, keep_ms],
            )

    def remember(
        self,
        person: str,
        time_ms: int,
        tail: bytes | None,
        audit: AuditLimits | None,
        *,
        keep_ms: int,
    ) -> None:
        if self._closed:
            return
        per_person = audit.per_person if audit is not None and tail is not None else 0
        piece = b""
        if per_person and tail is not None and audit is not None:
            piece = fingerprint_of(tail)
            self._keep_piece(piece, _ENTRY, tail, audit.keep_ms)
        key = self._key_prefix + person.encode() + b"}"
        written = command(
            b"EVALSHA",
            _REMEMBER_SHA,
            b"3",
            key,
            key + b":choices",
            key + b":erased",
            piece,
            b"%d" % time_ms,
            b"%d" % per_person,
            b"%d" % (audit.keep_ms if audit is not None else 0),
            b"%d" % keep_ms,
            self._token() if audit is not None else b"",
        )
        if audit is not None:
            self._trail_limits = audit
        self._remembered.append(
            (person, written, time_ms, tail if audit is not None else None, time.monotonic())
        )
        if len(self._remembered) > _MAX_PENDING:
            del self._remembered[0]
            self._dropped += 1
        self._schedule_side_writes()

    def record(self, time_ms: int, token: str, tail: bytes, audit: AuditLimits) -> None:
        if self._closed:
            return
        self._trail_limits = audit
        trail = self._trail
        trail.append(pack_entry(time_ms, token, tail))
        if len(trail) > _MAX_PENDING:
            del trail[0]
            self._dropped += 1
        self._schedule_side_writes()

    def _schedule_side_writes(self) -> None:
        if not self._side_scheduled:
            # The next decision's write usually carries them; when none comes, this does.
            self._side_scheduled = True
            asyncio.get_running_loop().call_later(_SIDE_LINGER_SECONDS, self._flush_side)

    def _flush_side(self) -> None:
        self._side_scheduled = False
        if self._closed or not (self._trail or self._remembered or self._pieces):
            return
        if not self._pipe.ready:
            if time.monotonic() >= self._retry_at:
                self._background(self._connect_then_flush())
            else:  # kept until the store may be tried again
                self._schedule_side_writes()
            return
        side, handlers = self._side_commands()
        try:
            replies = self._pipe.send(side, len(handlers))
        except ConnectionError:
            self._requeue(handlers)
            return
        replies.add_done_callback(functools.partial(self._side_settled, handlers))

    def _side_settled(self, handlers: list[_SideReply], replies: asyncio.Future[list[Any]]) -> None:
        if replies.cancelled():
            return
        if replies.exception() is not None:
            self._requeue(handlers)
            return
        self._side_written(handlers, replies.result())

    async def _connect_then_flush(self) -> None:
        try:
            await self._reconnect()
        except Exception:  # kept for the next write, after retry_after
            self._schedule_side_writes()
            return
        if self._pipe.ready:
            self._flush_side()

    def _side_commands(self) -> tuple[bytes, list[_SideReply]]:
        """What waits on the side as commands: one EVALSHA of remember.lua per decision made
        without the store, one XADD carrying every waiting audit entry (and, now and then, the
        trail's trim by age and its expiry); with what to do with each reply."""
        # Pieces first: a record never names one that is not there.
        commands: list[bytes] = self._pieces
        handlers: list[_SideReply] = [_SideReply(None) for _ in commands]
        self._pieces = []
        # Past half a tombstone's life, the person's erasure may be forgotten: a decision that
        # waited that long (an outage) goes to the trail alone, naming nobody.
        stale = time.monotonic() - self.tombstone_ms / 2000
        for remembered in self._remembered:
            if remembered[4] > stale:
                commands.append(remembered[1])
                handlers.append(_SideReply(remembered))
            elif remembered[3] is not None:
                self._trail.append(pack_entry(remembered[2], "", remembered[3]))
                self._unlinked += 1
        self._remembered = []
        limits = self._trail_limits
        if self._trail and limits is not None:
            entries, self._trail = self._trail, []
            self._appended += len(entries)
            self._appends += 1
            # The trail holds about `max_entries` decisions: appends carry many each.
            shards = self._audit_keys
            appends = max(
                1, math.ceil(limits.max_entries * self._appends / self._appended / len(shards))
            )
            shard = shards[self._appends % len(shards)]
            commands.append(
                command(
                    b"XADD", shard, b"MAXLEN", b"~", b"%d" % appends, b"*",
                    b"n", b"%d" % len(entries), b"d", b"".join(entries),
                )
            )  # fmt: skip
            handlers.append(_SideReply(None))
            now = time.monotonic()
            if now - self._trimmed_at >= _TRIM_EVERY_SECONDS:
                self._trimmed_at = now
                oldest = int(time.time() * 1000) - limits.max_age_ms
                for key in shards:
                    commands.append(command(b"XTRIM", key, b"MINID", b"~", b"%d" % oldest))
                    # The trail goes by itself when decisions stop.
                    commands.append(command(b"PEXPIRE", key, b"%d" % limits.max_age_ms))
                    handlers += (_SideReply(None), _SideReply(None))
        if self._dropped:
            logger.warning(
                "throttle: %d audit entries were dropped while the store was unavailable",
                self._dropped,
                extra={"dropped": self._dropped},
            )
            self._dropped = 0
        if self._unlinked:
            logger.warning(
                "throttle: %d decisions made without the store waited too long to be written"
                " with their person; the audit trail has them naming nobody",
                self._unlinked,
                extra={"unlinked": self._unlinked},
            )
            self._unlinked = 0
        return b"".join(commands), handlers

    def _side_written(self, handlers: list[_SideReply], replies: list[Any]) -> None:
        failed: str | None = None
        for handler, reply in zip(handlers, replies, strict=True):
            if (error := reply_error(reply)) is not None:
                if str(error).startswith("NOSCRIPT") and handler.remembered is not None:
                    self._remembered.append(handler.remembered)
                    self._background(self._reload_scripts_quietly())
                else:
                    if str(error).startswith(SLOT_DOWN) and handler.remembered is not None:
                        self._remembered.append(handler.remembered)  # kept, as in an outage
                    failed = failed or str(error)
                continue
            remembered = handler.remembered
            if remembered is not None and remembered[3] is not None:
                token = reply.decode() if isinstance(reply, bytes) else ""
                self.record(remembered[2], token, remembered[3], self._trail_limits)  # type: ignore[arg-type]
        if failed is None:
            return
        self._leave_a_replica(failed)
        if failed.startswith(_SERVER_ERRORS) and self.guard is not None:
            # About the server, not one write: the same fault the decisions meet, reported once.
            self.guard.failed(StoreUnavailable(f"Redis: {failed}"))
        else:
            self._logs.warning(
                "side",
                "throttle: writing the audit trail failed: %s",
                failed,
                extra={"error": failed},
            )

    async def _reload_scripts_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self._reload_scripts()

    def _requeue(self, handlers: list[_SideReply]) -> None:
        """Side writes that did not reach Redis wait for the next write (decisions made without
        the store are kept; the trail entries of a lost append are not resent)."""
        self._remembered[:0] = [h.remembered for h in handlers if h.remembered is not None]
        self._pieces_written.clear()  # pieces that were in the lost write are written again

    async def _write_pending_now(self) -> None:
        """Write what waits before reading: a person asking why, or what is held about them,
        sees the last of it."""
        if not (self._trail or self._remembered or self._pieces):
            return
        if not self._pipe.ready:
            await asyncio.wait_for(self._reconnect(), self._stall_limit)
        side, handlers = self._side_commands()
        replies = await asyncio.wait_for(self._pipe.send(side, len(handlers)), self._stall_limit)
        self._side_written(handlers, replies)

    async def erase(self, person: str) -> Erasure:
        # What is still waiting to be written of theirs here is dropped; what waits in other
        # workers, or is on its way, meets the tombstone (remember.lua).
        self._remembered = [item for item in self._remembered if item[0] != person]
        async with _unavailable_on_error():
            pipe = await self._transaction()
            pipe.get(self.person_key(person))
            pipe.delete(self.person_key(person), self.choices_key(person))
            pipe.set(
                self.tombstone_key(person), math.floor(time.time() * 1000), px=self.tombstone_ms
            )
            raw, deleted, _ = await pipe.execute()
        return Erasure(state=bool(deleted), decisions=len(_recent_of(decode_record(raw))))

    async def _transaction(self) -> Any:
        """A MULTI/EXEC pipeline of redis-py's client."""
        return self._client.pipeline(transaction=True)

    async def token_of(self, person: str) -> str:
        async with _unavailable_on_error():
            await self._write_pending_now()  # a token a waiting decision is about to give them
            raw: Any = await self._client.get(self.person_key(person))
            token = decode_record(raw).get("k")
        return token if isinstance(token, str) else ""

    async def append_request(self, entry: bytes, audit: AuditLimits) -> None:
        key = self._audit_key
        oldest = int(time.time() * 1000) - audit.max_age_ms
        async with _unavailable_on_error():
            pipe = await self._transaction()
            # Beside the decisions' appends (`d`), under a field of its own (`r`).
            pipe.xadd(key, {b"r": entry})
            # Each entry is kept `max_age`, whether or not decisions are appended too: the
            # stream holds nothing older, and lives at least that long after this append.
            pipe.xtrim(key, minid=oldest, approximate=False)
            pipe.pexpire(key, audit.max_age_ms, nx=True)
            pipe.pexpire(key, audit.max_age_ms, gt=True)
            await pipe.execute()

    async def claim(self, name: str, ttl_ms: int) -> bool:
        """Whether this call is the first to claim `name` for `ttl_ms`, across every process on
        this Redis (SET NX PX): alerts' quiet periods. Raises `StoreUnavailable`."""
        async with _unavailable_on_error():
            claimed = await self._client.set(f"{self.prefix}claim:{name}", b"1", nx=True, px=ttl_ms)
        return bool(claimed)

    async def aclose(self) -> None:
        self._closed = True
        _fail(self._pending, StoreUnavailable("the store is closed"))
        self._pending = []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if (self._trail or self._remembered or self._pieces) and self._pipe.ready:
            # The last decisions' entries go out before the connection does.
            side, handlers = self._side_commands()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pipe.send(side, len(handlers)), 1.0)
        await self._pipe.aclose()
        await self._client.aclose()


def decode_record(raw: bytes | None) -> dict[str, Any]:
    """A person's record (see lua/record.lua) as a map: `t` in ms, `c`, `b`, `k`, and `r`, its
    recent decisions as bytes; fields the record does not have are left out."""
    if not raw:
        return {}
    fields = msgpack.unpackb(raw, raw=True)
    if not isinstance(fields, list) or not fields:
        return {}
    decoded: dict[str, Any] = {"t": fields[0] * 1000}
    for name, value in zip("cbkrv", fields[1:], strict=False):
        if value is False or value is None:
            continue
        if name == "c" and isinstance(value, dict):
            value = {counter.decode(): log for counter, log in value.items()}
        elif name == "v" and isinstance(value, dict):
            value = {
                _text(held_id): [*held[:3], *(_text(counter) for counter in held[3:])]
                for held_id, held in value.items()
                if isinstance(held, list)
            }
        elif name == "k" and isinstance(value, bytes):
            value = value.decode()
        decoded[name] = value
    return decoded


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _recent_of(core: dict[str, Any]) -> list[tuple[int, bytes, str, int]]:
    """(when, fingerprint, outcome key, score) of the record's recent decisions, oldest first."""
    recent = core.get("r")
    if not isinstance(recent, bytes):
        return []
    decisions = []
    for at in range(0, len(recent) - RECENT_SIZE + 1, RECENT_SIZE):
        record = recent[at : at + RECENT_SIZE]
        decisions.append(
            (
                int.from_bytes(record[0:6], "big"),
                record[6:14],
                record[14:20].decode("ascii", "replace").rstrip(),
                int.from_bytes(record[20:22], "big"),
            )
        )
    return decisions


def _entry_of(piece: bytes | None, when: int, key: str, score: int) -> bytes | None:
    """A recent decision as a packed audit entry, from the piece it shares with others."""
    if piece is None:
        return None
    try:
        kind, data = msgpack.unpackb(piece, raw=False)
        if kind == _TEMPLATE:
            return RecentTemplate.unpacked(data).entry(when, key, score)
        if kind == _ENTRY:
            return pack_entry(when, "", data)
    except (ValueError, TypeError, KeyError):
        pass
    return None


class _Call:
    __slots__ = ("delivery", "future")

    def __init__(self, delivery: Delivery, future: asyncio.Future[Outcome]) -> None:
        self.delivery = delivery
        self.future = future


class _SideReply:
    """What a side write's reply is for: a decision made without the store, or nothing."""

    __slots__ = ("remembered",)

    def __init__(self, remembered: _Remembered | None) -> None:
        self.remembered = remembered


class _Deadline:
    """Fails a batch that gets no answer in time; while Redis is still answering (replies
    keep arriving), it waits longer, up to `_PROGRESS_GRACE` timeouts in all."""

    __slots__ = ("batch", "handle", "pipe", "started", "timeout")

    def __init__(self, pipe: Pipe, batch: list[_Call], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.pipe = pipe
        self.batch = batch
        self.timeout = timeout
        self.started = loop.time()
        self.handle: asyncio.TimerHandle | None = loop.call_later(timeout, self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        waited = loop.time() - self.started
        if self.pipe.answered_since(loop.time() - self.timeout) and (
            waited < _PROGRESS_GRACE * self.timeout
        ):
            self.handle = loop.call_later(self.timeout, self._expire)
            return
        # One more turn of the loop first: with uvloop, timers run before the loop reads the
        # sockets, and the answer may already be waiting in one.
        self.handle = loop.call_later(0, self.fail, TimeoutError(_late(self.timeout)))

    def fail(self, error: BaseException) -> None:
        _fail(self.batch, error)
        self.cancel()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def _wait(replicas: int, timeout_ms: int) -> bytes:
    """WAIT for `replicas`, for half the decision's timeout: its answer comes before the
    decision gives up."""
    return command(b"WAIT", b"%d" % replicas, b"%d" % max(1, timeout_ms // 2))


def _too_few(held: Any, replicas: int) -> Exception:
    """Replicas that did not acknowledge in time are late, like a slow answer: the batch falls
    back, and the store is paused only when it happens three times in a row."""
    if type(held) is int:
        return TimeoutError(f"{held} of {replicas} replicas acknowledged the decisions in time")
    return StoreUnavailable(f"Redis: WAIT failed: {held}")


def _late(timeout: float) -> str:
    return f"no answer within {timeout * 1000:.0f} ms"


@contextlib.asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    """Redis failures off the decision path, as the one error callers handle."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as error:
        raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
    except (ValueError, TypeError) as error:  # a record msgpack cannot read: not a 500
        raise StoreUnavailable(f"unreadable record: {error}") from error


def _store_error(error: BaseException) -> Exception:
    return error if isinstance(error, Exception) else StoreUnavailable("the store is closed")


def _fail(batch: list[_Call], error: BaseException) -> None:
    for call in batch:
        if not call.future.done():
            call.future.set_exception(error)


def _limit_arguments(limits: Limits) -> bytes:
    """ARGV[ARG_LIMITS], ARGV[ARG_LIMITS_FORMAT] and ARGV[ARG_REPETITION] of deliver.lua:
    what is the same for every message under these limits, encoded once."""
    repetition, budget = limits.repetition, limits.budget
    band = limits.band or (0,) * 6
    fields: dict[Limit, int] = {
        Limit.TTL: limits.ttl_ms,
        Limit.THRESHOLD: limits.threshold_milli,
        Limit.REPETITION_WEIGHT: repetition.weight_milli if repetition else 0,
        Limit.REPETITION_WINDOW: repetition.window_ms if repetition else 0,
        Limit.REPETITION_SATURATION: repetition.saturation if repetition else 0,
        Limit.BUDGET_LIMIT: budget.limit_milli if budget else -1,
        Limit.BUDGET_WINDOW: budget.window_ms if budget else 0,
        Limit.BUDGET_ENTRIES: budget.entries if budget else 0,
        Limit.SHADOW_CAPS: int(limits.shadow_caps),
        Limit.MINIMAL_THRESHOLD: limits.minimal_threshold_milli,
        Limit.FULL_THRESHOLD: limits.full_threshold_milli,
        Limit.DEFAULT_LEVEL: limits.default_level,
        Limit.KEEP_CHOICE: limits.keep_choice_ms,
        Limit.TRUST_SIGNED_IN: limits.trust_signed_in_milli,
        Limit.TRUST_DECLARED: limits.trust_declared_milli,
        Limit.LAMBDA_MINIMAL: limits.lambda_milli[0],
        Limit.LAMBDA_STANDARD: limits.lambda_milli[1],
        Limit.LAMBDA_FULL: limits.lambda_milli[2],
        Limit.BAND: int(bool(limits.band)),
        Limit.BAND_MINIMAL_LOW: band[0],
        Limit.BAND_MINIMAL_HIGH: band[1],
        Limit.BAND_STANDARD_LOW: band[2],
        Limit.BAND_STANDARD_HIGH: band[3],
        Limit.BAND_FULL_LOW: band[4],
        Limit.BAND_FULL_HIGH: band[5],
        Limit.RECENT_PER_PERSON: limits.recent_per_person,
        Limit.RECENT_KEEP: limits.recent_keep_ms,
    }
    names = [counter.name.encode() for counter in limits.counters]
    lua_format, python_format = limits_format(
        [len(name) for name in names], [len(counter.caps) for counter in limits.counters]
    )
    values: list[int | bytes] = [fields[field] for field in Limit]
    for name, counter in zip(names, limits.counters, strict=True):
        values += (name, counter.keep, counter.window_ms, int(counter.shadow), len(counter.caps))
        for cap in counter.caps:
            values += (cap.index, cap.limit, cap.window_ms, cap.period)
    return (
        bulk(struct.pack(python_format, *values))
        + bulk(lua_format.encode())
        + bulk(repetition.counter.encode() if repetition else b"")
    )
