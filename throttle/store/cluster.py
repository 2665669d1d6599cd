"""The store on a Redis Cluster: `redis+cluster://host:port[,host:port...]` (`rediss+cluster://`
for TLS), the convention `limits` uses.

Everything one decision touches for a person is in that person's slot: their record and their
choices share the hash tag `{pseudonym}`, and the scripts touch only those two keys. The pieces
of recent decisions (`recent:<fingerprint>`) are written and read as single keys, never by a
script. Audiences are hash-tagged (`audience:{segment}`) so a segment's PFADD, PEXPIRE and
PFCOUNT go to one node, and the audit trail is spread over `AUDIT_SHARDS` streams with distinct
hash tags, appended to in turn, so that no single node takes every append.

The decision path stays pipelined: `ClusterPipe` splits each batch the store writes by slot and
sends one write per master node on that node's own `Pipe`, then puts the replies back in order.
The slot map is learned at start (CLUSTER SLOTS), patched on MOVED and learned again after it;
ASK is followed with ASKING and the command, sent to the importing node. A node that cannot be
reached is an outage for the people in its slots only: their commands get a SLOTDOWN reply and
the store refuses their decisions alone (segment content; the engine keeps using the store for
everyone else), it is logged once, and it is tried again after `retry_after`, the slot map
first, so decisions resume on the replica the cluster promotes. MOVED and ASK replies never
reach the store; TRYAGAIN is retried a few times first.

The stricter mode (`[store] replicas = N`): the store ends its batch with one keyless WAIT. It
goes to no master as such: each write to a master that carries decisions ends with its own WAIT,
on the same connection, so it covers exactly those decisions. A master whose count falls short
(a lost replica, a promoted master with none yet) or that errs turns its decisions into SLOTDOWN
replies, its people's outage alone; the batch's WAIT is answered with N for the store, as every
decision still standing reached N replicas. A WAIT that falls short blocks its connection for
half the timeout, so such a master's decisions are then refused unsent, logged once, for
`retry_after`; then one write asks again with a WAIT.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import hiredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from throttle.store.layout import script, sha1
from throttle.store.pipe import Pipe, bulk, command
from throttle.store.redis import LOAD_SCRIPTS, SLOT_DOWN, RedisStore

logger = logging.getLogger(__name__)

SLOTS = 16384
# Streams the audit trail is spread over; `throttle audit` reads them all.
AUDIT_SHARDS = 16
# A command redirected more often than this gets the last redirection as its (error) reply.
_MAX_REDIRECTS = 5
# While a node is unreachable, the slot map is learned again at most this often.
_REFRESH_EVERY_SECONDS = 0.1
# A node's write still unanswered after this many timeouts fails, even while the node answers
# (slowly): as the single store's `_Deadline` does.
_PROGRESS_GRACE = 4
# Commands whose first argument is their key; EVAL and EVALSHA name theirs after the count.
_KEY_FIRST = frozenset(
    (b"SET", b"GET", b"DEL", b"PFADD", b"PFCOUNT", b"PEXPIRE", b"XADD", b"XTRIM", b"MGET")
)
# Replies that send a command elsewhere, or again a little later.
_REDIRECTIONS = ("MOVED ", "ASK ", "TRYAGAIN")
# The first wait before a command that met TRYAGAIN (keys in migration) is sent again; doubled
# each time.
_TRYAGAIN_SECONDS = 0.005
_SCRIPTED = frozenset((b"EVALSHA", b"EVAL"))
_ASKING = command(b"ASKING")
_WAIT = b"WAIT"
# How a decision (deliver.lua by its SHA) starts, after the array's length.
_DECISION = bulk(b"EVALSHA") + bulk(sha1(script("deliver")))
_CLUSTER_SLOTS = command(b"CLUSTER", b"SLOTS")


def key_slot(key: bytes) -> int:
    """The cluster slot of `key`: CRC16 (XMODEM) of its hash tag, the part between the first
    `{` and the next `}` when that is not empty, or else of the whole key; mod 16384."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


def split_commands(payload: bytes) -> list[tuple[bytes, bytes | None]]:
    """The commands (each in RESP) of a batch as written, each with its key (None: keyless)."""
    # hiredis parses the commands (RESP arrays of bulk strings, as replies are) in C; each
    # command's bytes are then cut from the payload by its encoded length.
    reader = hiredis.Reader()
    reader.feed(payload)
    commands: list[tuple[bytes, bytes | None]] = []
    position = 0
    while (arguments := reader.gets()) is not False:
        size = (
            3
            + len(str(len(arguments)))
            + sum([len(argument) + 5 + len(str(len(argument))) for argument in arguments])
        )
        name = arguments[0].upper()
        key: bytes | None = None
        if name in _SCRIPTED:
            if len(arguments) > 3 and arguments[2] != b"0":
                key = arguments[3]
        elif name in _KEY_FIRST and len(arguments) > 1:
            key = arguments[1]
        commands.append((payload[position : position + size], key))
        position += size
    return commands


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """Where the cluster's seeds are, and how to talk to each node."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None
    password: str | None
    query: str

    def node_url(self, host: str, port: int) -> str:
        """A single-node URL for `Pipe` (no database: a cluster has only 0)."""
        scheme = "rediss" if self.tls else "redis"
        credentials = ""
        if self.password is not None:
            user = _quote(self.username or "")
            credentials = f"{user}:{_quote(self.password)}@"
        shown = f"[{host}]" if ":" in host else host
        query = f"?{self.query}" if self.query else ""
        return f"{scheme}://{credentials}{shown}:{port}{query}"


def _quote(text: str) -> str:
    return urlencode({"": text})[1:]


def parse_cluster_url(url: str) -> ClusterAddress:
    """`redis+cluster://[[user]:password@]host:port[,host:port...][/][?options]`, or
    `rediss+cluster://` for TLS. Raises ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+cluster", "rediss+cluster"):
        raise ValueError(f"not a cluster URL (redis+cluster:// or rediss+cluster://): {url!r}")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0; leave the path out")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else unquote(user)
        if not has_password:
            username = None
    seeds = []
    for location in hosts.split(","):
        host, port = _host_port(location.strip())
        seeds.append((host, port))
    if not seeds:
        raise ValueError("name at least one node: redis+cluster://host:port,host:port")
    # Options parse_url understands (ssl_cert_reqs, ssl_ca_certs, ...) apply to every node.
    query = urlencode(parse_qsl(parts.query))
    return ClusterAddress(
        tuple(seeds), parts.scheme.startswith("rediss"), username, password, query
    )


def _host_port(location: str) -> tuple[str, int]:
    if not location:
        raise ValueError("an empty node in the list; write host:port,host:port")
    if location.startswith("["):  # [IPv6]:port
        host, _, rest = location[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = location.rpartition(":")
        if not host:
            host, port_text = port_text, ""
    if not port_text:
        return host, 6379
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} of {location!r} is not a port number")
    return host, int(port_text)


class _Node:
    """One master: its connection, and when it may be tried again after a failure."""

    __slots__ = ("address", "down_since", "pipe", "probing", "retry_at", "short_until")

    def __init__(self, address: str, pipe: Pipe) -> None:
        self.address = address
        self.pipe = pipe
        self.retry_at = 0.0
        self.down_since: float | None = None
        # The stricter mode: after a WAIT fell short, until when its decisions are refused
        # unsent, and whether the one write that asks again (with a WAIT) is out.
        self.short_until: float | None = None
        self.probing = False


class _Job:
    """One batch the store sent: its replies, filled in as the nodes answer."""

    __slots__ = ("future", "parts", "remaining", "replicas", "replies", "wait")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.replies: list[Any] = [None] * count
        # Per command, the answers still awaited: one, or one per master for a keyless one.
        self.parts = [1] * count
        self.remaining = count
        # The stricter mode: the WAIT each node's write of decisions ends with, and its N.
        self.wait: bytes | None = None
        self.replicas = 0

    def wait_per_node(self, index: int, raw: bytes, replicas: int) -> None:
        """The batch's WAIT at `index` is sent with each node's decisions instead: answered now
        with `replicas` for the store, a node's shortfall refusing that node's decisions."""
        self.wait = raw
        self.replicas = replicas
        self.replies[index] = replicas
        self.parts[index] = 0
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.replies)

    def answer(self, index: int, reply: Any) -> None:
        if self.parts[index] <= 0:
            return
        current = self.replies[index]
        # A keyless command sent to every master (SCRIPT LOAD): the first error stands, else
        # the first reply.
        if current is None or (
            isinstance(reply, hiredis.ReplyError) and not isinstance(current, hiredis.ReplyError)
        ):
            self.replies[index] = reply
        self.parts[index] -= 1
        if self.parts[index] == 0:
            self.remaining -= 1
            if self.remaining == 0 and not self.future.done():
                self.future.set_result(self.replies)


class ClusterPipe(Pipe):
    """The decision path's connection to a Redis Cluster: one `Pipe` per master node, each batch
    split by slot and its replies put back in order. What the store sees is one `Pipe`."""

    def __init__(
        self, address: ClusterAddress, *, connect_timeout: float, handshake: tuple[bytes, ...] = ()
    ) -> None:
        self._cluster_address = address
        self._connect_timeout = connect_timeout
        self._handshake_commands = handshake
        # The master serving each slot ("host:port"), None until the map is learned.
        self._slots: list[str | None] = [None] * SLOTS
        self._known = False
        self._nodes: dict[str, _Node] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -_REFRESH_EVERY_SECONDS
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Replies that sent a command elsewhere or again, by kind: "MOVED", "ASK", "TRYAGAIN".
        self.redirections: collections.Counter[str] = collections.Counter()
        # Set by the store from the policy: a node's write unanswered this long fails, and a
        # failed node is tried again after `retry_after`.
        self.timeout = 0.05
        self.retry_after = 1.0
        self.stall_limit = 5.0

    # What the store calls, as on a `Pipe`.

    @property
    def ready(self) -> bool:
        return self._known and not self._closed

    def oldest_wait(self) -> float:
        # Each node's stalls are handled here, per node: the store must not drop every node's
        # connection because one stopped answering.
        return 0.0

    def answered_since(self, moment: float) -> bool:
        return any(node.pipe.answered_since(moment) for node in self._nodes.values())

    def abort(self, error: Exception) -> None:
        for node in self._nodes.values():
            node.pipe.abort(error)

    async def connect(self) -> None:
        """Learn the slot map (raises ConnectionError when no node answers)."""
        if not self._known:
            await self.refresh()

    def send(self, payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        if not self._known:
            raise ConnectionError("the cluster's slot map is not known yet")
        commands = split_commands(payload)
        if len(commands) != replies:
            raise ValueError(f"{len(commands)} commands in a batch that expects {replies} replies")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        job = _Job(future, len(commands))
        if not commands:
            future.set_result([])
            return future
        groups: dict[str, list[tuple[int, bytes]]] = {}
        masters = self.masters()
        for index, (raw, key) in enumerate(commands):
            if key is None and (replicas := _wait_for(raw)) is not None:
                job.wait_per_node(index, raw, replicas)
            elif key is None:
                job.parts[index] = len(masters)
                for master in masters:
                    groups.setdefault(master, []).append((index, raw))
            else:
                owner = self._slots[key_slot(key)]
                if owner is None:
                    job.answer(index, _uncovered(key_slot(key)))
                    continue
                groups.setdefault(owner, []).append((index, raw))
        for owner, group in groups.items():
            self._dispatch(job, owner, group, asking=False, redirects=0)
        return future

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(node.pipe.aclose() for node in self._nodes.values()))

    # The slot map.

    def masters(self) -> list[str]:
        """The masters serving slots, as "host:port"."""
        return list(dict.fromkeys(owner for owner in self._slots if owner is not None))

    def owner(self, key: bytes) -> str | None:
        return self._slots[key_slot(key)]

    async def refresh(self) -> None:
        """Learn the slot map again, from a master already connected or else from any node
        known or given; raises ConnectionError when none answers."""
        if self._refreshing is None:
            self._refreshing = asyncio.create_task(self._learn_slots())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done():
                self._refreshing = None

    def refresh_soon(self) -> None:
        """Learn the slot map again in the background, at most every so often."""
        now = time.monotonic()
        if self._closed or self._refreshing is not None:
            return
        if now - self._refreshed_at < _REFRESH_EVERY_SECONDS:
            return
        self._refreshed_at = now
        self._background(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()

    async def _learn_slots(self) -> None:
        self._refreshed_at = time.monotonic()
        errors: list[str] = []
        for address, pipe, temporary in self._sources():
            try:
                if temporary:
                    await pipe.connect()
                async with asyncio.timeout(self._connect_timeout):
                    (reply,) = await pipe.send(_CLUSTER_SLOTS, 1)
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(str(reply))
                self._apply_slots(reply, address)
                return
            except (OSError, TimeoutError, ConnectionError) as error:
                errors.append(f"{address}: {error or type(error).__name__}")
            finally:
                if temporary:
                    await pipe.aclose()
        raise ConnectionError("no node of the cluster answered: " + "; ".join(errors))

    def _sources(self) -> Iterable[tuple[str, Pipe, bool]]:
        """Where to ask for the slot map: masters connected now, then every node known."""
        for node in list(self._nodes.values()):
            if node.pipe.ready:
                yield node.address, node.pipe, False
        seeds = [f"{host}:{port}" for host, port in self._cluster_address.seeds]
        for address in dict.fromkeys([*self._nodes, *seeds]):
            host, _, port = address.rpartition(":")
            url = self._cluster_address.node_url(host, int(port))
            yield address, Pipe(url, connect_timeout=self._connect_timeout), True

    def _apply_slots(self, reply: Any, asked: str) -> None:
        slots: list[str | None] = [None] * SLOTS
        for entry in reply:
            start, end, master = entry[0], entry[1], entry[2]
            host = master[0].decode() if master[0] else asked.rpartition(":")[0]
            address = f"{host}:{master[1]}"
            self._node(address)
            slots[start : end + 1] = [address] * (end - start + 1)
        previous, self._slots = self._slots, slots
        self._known = True
        for node in self._nodes.values():
            if node.down_since is None or node.address in slots:
                continue
            taken = {slots[slot] for slot, owner in enumerate(previous) if owner == node.address}
            logger.warning(
                "throttle: Redis Cluster node %s is replaced: its slots are served by %s",
                node.address,
                ", ".join(sorted(str(owner) for owner in taken)),
                extra={"node": node.address},
            )
            node.down_since = None

    def _node(self, address: str) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            host, _, port = address.rpartition(":")
            pipe = Pipe(
                self._cluster_address.node_url(host, int(port)),
                connect_timeout=self._connect_timeout,
                handshake=self._handshake_commands,
            )
            node = self._nodes[address] = _Node(address, pipe)
        return node

    # Sending to one node.

    def _dispatch(
        self,
        job: _Job,
        address: str,
        group: list[tuple[int, bytes]],
        *,
        asking: bool,
        redirects: int,
    ) -> None:
        if self._closed:  # a retry that outlived the store
            _answer_all(job, group, _slot_down("the store is closed"))
            return
        node = self._node(address)
        if node.pipe.ready and node.pipe.oldest_wait() >= self.stall_limit:
            # Silent this long: the connection is dead without having said so.
            self._node_failed(node, TimeoutError(f"no answer for {self.stall_limit:.0f} s"))
        if node.pipe.ready:
            self._write(job, node, group, asking=asking, redirects=redirects)
        elif time.monotonic() < node.retry_at:
            self.refresh_soon()
            _answer_all(job, group, _unreachable(node))
        else:
            self._background(self._connect_then_write(job, node, group, asking, redirects))

    async def _connect_then_write(
        self, job: _Job, node: _Node, group: list[tuple[int, bytes]], asking: bool, redirects: int
    ) -> None:
        if node.down_since is not None:
            # It failed before: the cluster may have promoted its replica meanwhile.
            with contextlib.suppress(Exception):
                await self.refresh()
            if not asking and not self._still_owns(node.address, group):
                self._reroute(job, group, redirects + 1)
                return
        try:
            await node.pipe.connect()
        except Exception as error:
            self._node_failed(node, error)
            _answer_all(job, group, _unreachable(node))
            return
        self._node_recovered(node)
        self._write(job, node, group, asking=asking, redirects=redirects)

    def _still_owns(self, address: str, group: list[tuple[int, bytes]]) -> bool:
        for _, raw in group:
            key = split_commands(raw)[0][1]
            if key is not None and self._slots[key_slot(key)] != address:
                return False
        return True

    def _reroute(self, job: _Job, group: list[tuple[int, bytes]], redirects: int) -> None:
        groups: dict[str, list[tuple[int, bytes]]] = {}
        for index, raw in group:
            key = split_commands(raw)[0][1]
            owner = self._slots[key_slot(key)] if key is not None else None
            if owner is None:
                job.answer(index, _uncovered(key_slot(key) if key is not None else -1))
            else:
                groups.setdefault(owner, []).append((index, raw))
        for owner, moved in groups.items():
            self._dispatch(job, owner, moved, asking=False, redirects=redirects)

    def _write(
        self,
        job: _Job,
        node: _Node,
        group: list[tuple[int, bytes]],
        *,
        asking: bool,
        redirects: int,
    ) -> None:
        waits = job.wait is not None and any(_decides(raw) for _, raw in group)
        probe = False
        if waits and node.short_until is not None:
            if node.probing or time.monotonic() < node.short_until:
                group = _refuse_decisions(job, node, group)
                waits = False
                if not group:
                    return
            else:
                # This write asks again; the others wait for its answer.
                node.probing = probe = True
        if asking:
            payload = b"".join(_ASKING + raw for _, raw in group)
        else:
            payload = b"".join(raw for _, raw in group)
        expected = len(group) * (2 if asking else 1)
        if waits:
            # Right after this node's decisions, on its connection: it covers those writes.
            payload += job.wait or b""
            expected += 1
        try:
            replies = node.pipe.send(payload, expected)
        except ConnectionError as error:
            if probe:
                node.probing = False
            self._node_failed(node, error)
            _answer_all(job, group, _unreachable(node))
            return
        timer = _NodeDeadline(job, node, group, self.timeout)
        replies.add_done_callback(
            functools.partial(
                self._answered, job, node, group, asking, redirects, (waits, probe), timer
            )
        )

    def _answered(
        self,
        job: _Job,
        node: _Node,
        group: list[tuple[int, bytes]],
        asking: bool,
        redirects: int,
        waiting: tuple[bool, bool],
        timer: _NodeDeadline,
        replies: asyncio.Future[list[Any]],
    ) -> None:
        timer.cancel()
        waits, probe = waiting
        if probe:
            node.probing = False
        if replies.cancelled() or replies.exception() is not None:
            error = replies.exception() if not replies.cancelled() else None
            self._node_failed(node, error or ConnectionError("cancelled"))
            _answer_all(job, group, _unreachable(node))
            return
        values = replies.result()
        shortfall = None
        if waits:
            held = values.pop()
            if type(held) is not int or held < job.replicas:
                shortfall = _too_few_replicas(node, held, job.replicas)
                self._node_short(node, held, job.replicas)
            elif node.short_until is not None:
                node.short_until = None
                logger.warning(
                    "throttle: Redis Cluster node %s has its replicas again",
                    node.address,
                    extra={"node": node.address},
                )
        if asking:
            values = values[1::2]  # each ASKING's +OK, then the command's reply
        redirected: dict[tuple[str, bool], list[tuple[int, bytes]]] = {}
        retry: list[tuple[int, bytes]] = []
        for (index, raw), reply in zip(group, values, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                if message.startswith(_REDIRECTIONS):
                    self.redirections[message.split(" ", 1)[0]] += 1
                    if redirects >= _MAX_REDIRECTS:
                        reply = _slot_down(f"redirected too often: {message}")
                    elif message.startswith("MOVED "):
                        _, slot, target = message.split()
                        self._node(target)
                        self._slots[int(slot)] = target
                        self.refresh_soon()  # one slot moved: others may have too
                        redirected.setdefault((target, False), []).append((index, raw))
                        continue
                    elif message.startswith("ASK "):
                        _, _, target = message.split()
                        redirected.setdefault((target, True), []).append((index, raw))
                        continue
                    else:  # TRYAGAIN: the person's keys are split between two nodes for now
                        retry.append((index, raw))
                        continue
            elif shortfall is not None and _decides(raw):
                # Counted on this master, but maybe lost in a failover: not personalized on it
                # (the count stays: over-counting is the safe side).
                reply = shortfall
            job.answer(index, reply)
        for (target, ask), moved in redirected.items():
            self._dispatch(job, target, moved, asking=ask, redirects=redirects + 1)
        if retry:
            asyncio.get_running_loop().call_later(
                _TRYAGAIN_SECONDS * 2**redirects, self._reroute, job, retry, redirects + 1
            )

    def _node_short(self, node: _Node, held: Any, replicas: int) -> None:
        if node.short_until is None:
            logger.warning(
                "throttle: Redis Cluster node %s: WAIT %d answered %s; the people in its slots "
                "get segment content until it has its replicas again (asked every retry_after)",
                node.address,
                replicas,
                held,
                extra={"node": node.address},
            )
        node.short_until = time.monotonic() + self.retry_after

    def _node_failed(self, node: _Node, error: BaseException) -> None:
        node.pipe.abort(ConnectionError(f"node {node.address} failed"))
        node.retry_at = time.monotonic() + self.retry_after
        if node.down_since is None:
            node.down_since = time.monotonic()
            logger.warning(
                "throttle: Redis Cluster node %s is unreachable (%s); the people in its slots "
                "get segment content until it or its replica answers",
                node.address,
                error,
                extra={"node": node.address},
            )
        self.refresh_soon()

    def _node_recovered(self, node: _Node) -> None:
        if node.down_since is not None:
            logger.warning(
                "throttle: Redis Cluster node %s answers again after %.1f s",
                node.address,
                time.monotonic() - node.down_since,
                extra={"node": node.address},
            )
            node.down_since = None

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _NodeDeadline:
    """Answers a node's part of a batch for it when the node says nothing at all in time: its
    people fall back (their decisions alone), the rest of the batch goes on. A node that is
    answering, only slowly (a busy machine), is left to the store's own deadline, as one Redis
    would be; a connection that stays silent past the stall limit is dropped when next used."""

    __slots__ = ("group", "handle", "job", "node", "started", "timeout")

    def __init__(self, job: _Job, node: _Node, group: list[tuple[int, bytes]], timeout: float):
        loop = asyncio.get_running_loop()
        self.job = job
        self.node = node
        self.group = group
        self.timeout = timeout
        self.started = loop.time()
        self.handle: asyncio.TimerHandle | None = loop.call_later(timeout, self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.node.pipe.answered_since(now - self.timeout):
            if now - self.started < _PROGRESS_GRACE * self.timeout:
                self.handle = loop.call_later(self.timeout, self._expire)
            else:
                self.handle = None
            return
        # One more turn of the loop first: the answer may already wait in the socket.
        self.handle = loop.call_later(0, self._silent)

    def _silent(self) -> None:
        self.handle = None
        late = _slot_down(f"no answer from {self.node.address} within {self.timeout * 1000:.0f} ms")
        # Replies that come later find their commands answered, and are dropped.
        _answer_all(self.job, self.group, late)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def _answer_all(job: _Job, group: list[tuple[int, bytes]], reply: Any) -> None:
    for index, _ in group:
        job.answer(index, reply)


def _slot_down(why: str) -> hiredis.ReplyError:
    # Not one of the store's server errors: the store refuses this person's decision alone
    # (DecisionRefused), and the engine keeps using the store for everyone else.
    return hiredis.ReplyError(f"{SLOT_DOWN} {why}")


def _unreachable(node: _Node) -> hiredis.ReplyError:
    return _slot_down(f"the node serving the slot, {node.address}, is unreachable")


def _uncovered(slot: int) -> hiredis.ReplyError:
    return _slot_down(f"slot {slot} is served by no node")


def _refuse_decisions(
    job: _Job, node: _Node, group: list[tuple[int, bytes]]
) -> list[tuple[int, bytes]]:
    """Answers the group's decisions for a node short of replicas; the rest, still to send."""
    refused = _slot_down(f"{node.address} had too few replicas lately; asked again later")
    rest = []
    for index, raw in group:
        if _decides(raw):
            job.answer(index, refused)
        else:
            rest.append((index, raw))
    return rest


def _too_few_replicas(node: _Node, held: Any, replicas: int) -> hiredis.ReplyError:
    if type(held) is int:
        return _slot_down(f"{held} of {replicas} replicas of {node.address} acknowledged in time")
    return _slot_down(f"WAIT failed on {node.address}: {held}")


def _wait_for(raw: bytes) -> int | None:
    """The replicas a WAIT command asks for; None for any other command."""
    reader = hiredis.Reader()
    reader.feed(raw)
    arguments = reader.gets()
    if arguments[0].upper() != _WAIT:
        return None
    return int(arguments[1])


def _decides(raw: bytes) -> bool:
    """Whether a command is a decision (deliver.lua), not a side write or a read."""
    return raw.startswith(_DECISION, raw.index(b"\n") + 1)


def audit_keys(prefix: str) -> tuple[str, ...]:
    """The streams the audit trail of a cluster store under `prefix` is spread over."""
    return tuple(f"{prefix}audit:{{{shard}}}" for shard in range(AUDIT_SHARDS))


def cluster_client(
    address: ClusterAddress, *, connect_timeout: float, read_timeout: float
) -> RedisCluster:
    """redis-py's cluster client, for what is off the decision path (privacy routes, erasure,
    the audit trail's reader)."""
    options: dict[str, Any] = dict(parse_qsl(address.query))
    tls: dict[str, Any] = {}
    if address.tls:
        tls["ssl"] = True
        if "ssl_ca_certs" in options:
            tls["ssl_ca_certs"] = options["ssl_ca_certs"]
        if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "optional"):
            tls["ssl_cert_reqs"] = "none"
            tls["ssl_check_hostname"] = False
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        username=address.username,
        password=address.password,
        socket_connect_timeout=connect_timeout,
        socket_timeout=read_timeout,
        **tls,
    )


class ClusterStore(RedisStore):
    """State in a Redis Cluster at `url` (`redis+cluster://host:port,host:port` or
    `rediss+cluster://...`), keys under `prefix`; see the module's docstring for the layout.

    ```python
    store = open_store("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
    ```
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "throttle:",
        connect_timeout: float = 1.0,
        stall_limit: float = 5.0,
    ) -> None:
        self._address = parse_cluster_url(url)
        super().__init__(
            url, prefix=prefix, connect_timeout=connect_timeout, stall_limit=stall_limit
        )
        self._cluster.stall_limit = stall_limit
        self._audit_keys = tuple(key.encode() for key in audit_keys(prefix))
        # Data requests go to one of the shards, where `throttle audit` reads too.
        self._audit_key = self._audit_keys[0]

    def _connections(
        self, url: str, *, connect_timeout: float, stall_limit: float
    ) -> tuple[Pipe, RedisCluster]:
        self._cluster = ClusterPipe(
            self._address, connect_timeout=connect_timeout, handshake=LOAD_SCRIPTS
        )
        self._cluster_client = cluster_client(
            self._address, connect_timeout=connect_timeout, read_timeout=stall_limit
        )
        return self._cluster, self._cluster_client

    def audience_key(self, segment: str) -> str:
        return f"{self.prefix}audience:{{{segment}}}"

    def _flush(self) -> None:
        if self._pending:
            limits = self._pending[0].delivery.limits
            self._cluster.timeout = limits.timeout_ms / 1000
            self._cluster.retry_after = limits.retry_after_ms / 1000
        super()._flush()

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        # Each audience has a slot of its own, and redis-py pipelines no PFCOUNT across slots:
        # one call each, all at once.
        client = self._cluster_client
        counts = await asyncio.gather(*(client.pfcount(self.audience_key(s)) for s in segments))
        return dict(zip(segments, counts, strict=True))

    async def _transaction(self) -> Any:
        # redis-py queues a cluster transaction's commands from a thread with an event loop of
        # its own: a client that learned the cluster there would keep that closed loop's
        # connections. It learns it here, in ours.
        await self._cluster_client.initialize()
        return await super()._transaction()

    async def _get_many(self, keys: list[bytes]) -> list[Any]:
        # The pieces live in many slots: one GET per slot, batched per node by redis-py.
        values: list[Any] = await self._cluster_client.mget_nonatomic(keys)
        return values
