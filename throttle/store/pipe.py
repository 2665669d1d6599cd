"""A Redis connection for the decision path: batches out in one write, replies back in order.

redis-py's pipelines cost tens of microseconds per command in Python (a pool checkout, an
await and a timeout per reply); at thousands of decisions a second that is most of the
middleware's cost. This connection writes a batch as one pre-encoded buffer and lets hiredis
parse replies as they arrive, resolving one future per batch. redis-py remains the client for
everything off the hot path.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError


def command(*arguments: bytes) -> bytes:
    """One command in RESP, the Redis wire format."""
    return b"*%d\r\n" % len(arguments) + b"".join(bulk(a) for a in arguments)


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def reply_error(reply: Any) -> ResponseError | None:
    return ResponseError(str(reply)) if isinstance(reply, hiredis.ReplyError) else None


class _Batch:
    __slots__ = ("expected", "future", "replies", "sent_at")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int, sent_at: float) -> None:
        self.future = future
        self.replies: list[Any] = []
        self.expected = expected
        self.sent_at = sent_at


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[_Batch] = collections.deque()
        self.transport: asyncio.WriteTransport | None = None
        self.lost: Exception | None = None
        # When the last bytes arrived (loop time): a slow Redis is still a working one.
        self.answered_at = 0.0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but write the same.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.answered_at = asyncio.get_running_loop().time()
        self.reader.feed(data)
        waiting = self.waiting
        while (reply := self.reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self._close(ConnectionError("unexpected reply from Redis"))
                return
            batch = waiting[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.expected:
                waiting.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("Redis closed the connection")
        if not self.finished.done():
            self.finished.set_result(None)
        while self.waiting:
            batch = self.waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(self.lost)

    def _close(self, error: Exception) -> None:
        self.lost = error
        if self.transport is not None:
            self.transport.abort()


class Pipe:
    """One connection to the Redis at `url`, opened on first use and again after a loss.

    `handshake`: commands (each in RESP) sent first on every new connection, e.g. SCRIPT
    LOADs, whose error replies fail the connection. `address`: where to connect, asked anew
    for every connection (Sentinel's master), instead of the URL's host and port. `moved`:
    asked every `recheck` seconds while connected (ten times as often while an answer is
    overdue); when it says so, the connection is dropped (a master the sentinels replaced,
    which has not noticed yet).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        handshake: tuple[bytes, ...] = (),
        address: Callable[[], Awaitable[tuple[str, int]]] | None = None,
        moved: Callable[[], Awaitable[bool]] | None = None,
        recheck: float = 1.0,
    ) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._address = address
        self._moved = moved
        self._recheck = recheck
        self._watching: asyncio.Task[None] | None = None
        self._connect_timeout = connect_timeout
        self._extra_handshake = handshake
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        # Every connection opened, so that closing waits until each socket is really shut.
        self._opened: list[_Protocol] = []

    @property
    def ready(self) -> bool:
        return self._protocol is not None and self._protocol.lost is None

    def send(self, payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Write `payload` now; the future gets its `replies` replies. Only when `ready`."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            raise ConnectionError("not connected to Redis")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiting.append(_Batch(future, replies, loop.time()))
        protocol.transport.write(payload)
        return future

    def oldest_wait(self) -> float:
        """Seconds the oldest unanswered batch has waited; 0 when none waits."""
        if self._protocol is None or not self._protocol.waiting:
            return 0.0
        return asyncio.get_running_loop().time() - self._protocol.waiting[0].sent_at

    def answered_since(self, moment: float) -> bool:
        """Whether Redis sent anything on this connection since `moment` (loop time)."""
        return self._protocol is not None and self._protocol.answered_at >= moment

    def abort(self, error: Exception) -> None:
        """Drop the connection, failing what waits on it; the next send reconnects."""
        if self._protocol is not None:
            self._protocol._close(error)
            self._protocol = None

    async def connect(self) -> None:
        if self.ready:
            return
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._open())
        connecting = self._connecting
        try:
            self._protocol = await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        options = self._options
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            if "path" in options:
                _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
            else:
                context = _tls_context(options) if "connection_class" in options else None
                host, port = (
                    await self._address()
                    if self._address is not None
                    else (options.get("host", "localhost"), options.get("port", 6379))
                )
                _, protocol = await loop.create_connection(_Protocol, host, port, ssl=context)
            self._opened = [p for p in self._opened if not p.finished.done()]
            self._opened.append(protocol)
            try:
                await self._handshake(protocol)
            except BaseException:
                protocol._close(ConnectionError("Redis refused the handshake"))
                raise
        if self._moved is not None and self._watching is None:
            self._watching = asyncio.create_task(self._watch(self._moved))
        return protocol

    async def _watch(self, moved_away: Callable[[], Awaitable[bool]]) -> None:
        # A connection that stopped answering is looked at ten times as often: a stalled
        # master may be replaced, and would take writes again the moment it wakes up.
        stalled = self._recheck / 10
        while True:
            await asyncio.sleep(stalled if self.oldest_wait() > stalled else self._recheck)
            if not self.ready:
                continue
            try:
                moved = await moved_away()
            except Exception:  # no answer is no news: the connection stays
                continue
            if moved:
                self.abort(ConnectionError("the sentinels named another master"))

    async def _handshake(self, protocol: _Protocol) -> None:
        options = self._options
        handshake = []
        if "password" in options:
            username = options.get("username")
            credentials = (username, options["password"]) if username else (options["password"],)
            handshake.append(command(b"AUTH", *(c.encode() for c in credentials)))
        if options.get("db"):
            handshake.append(command(b"SELECT", str(options["db"]).encode()))
        handshake += self._extra_handshake
        if not handshake or protocol.transport is None:
            return
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(_Batch(future, len(handshake), 0.0))
        protocol.transport.write(b"".join(handshake))
        for reply in await future:
            if (error := reply_error(reply)) is not None:
                raise error

    async def aclose(self) -> None:
        """Close every connection and wait (briefly) until their sockets are shut."""
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
            self._watching = None
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        for protocol in self._opened:
            if protocol.transport is not None:
                protocol.transport.close()
        waiting = [asyncio.shield(p.finished) for p in self._opened]
        if waiting:
            await asyncio.wait(waiting, timeout=1.0)
        self._opened.clear()
        self._protocol = None


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
