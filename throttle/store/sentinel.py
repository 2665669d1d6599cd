"""Redis behind Sentinel: store URLs `redis+sentinel://`, and the master found through them.

The URL follows `limits`' convention::

    redis+sentinel://[[user:]password@]host:port[,host:port...]/service_name[/db]
    rediss+sentinel://...             (TLS to the sentinels and the master)
    ...?sentinel_password=...         (the sentinels' own password, when it differs)

The password in the user part is the master's and, unless `sentinel_password` is given, the
sentinels' too (`?sentinel_password=` with nothing after it: the sentinels ask for none).
Other query parameters (`ssl_ca_certs`, `ssl_cert_reqs`, ...) apply to every connection, as
in a `redis://` URL. A sentinel without a port listens on 26379.

Every sentinel is asked what it knows of the master (`SENTINEL MASTER`, all at once); the
master of the newest configuration (the highest config epoch) is confirmed by its own `ROLE`
before it is used, on every new connection: the decision path's (`Pipe`) and redis-py's
(privacy routes, erasure, audit). A connection lost, or a `READONLY`
reply (the master was demoted), makes the next one look again; so does a change of master
that the sentinels, asked every second, report.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from throttle.store.pipe import Pipe

SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
# How often the decision path asks the sentinels whether its master is still theirs.
MASTER_RECHECK_SECONDS = 1.0
# Query parameters about the sentinels, not passed on to the master's connections.
_SENTINEL_QUERY = ("sentinel_password", "sentinel_username")


@dataclasses.dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    # A `redis://` or `rediss://` URL for the master, its address left to the sentinels.
    master_url: str
    sentinel_options: dict[str, Any]

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"a Sentinel URL starts with {' or '.join(SCHEMES)}://")
        user_info, _, hosts = parts.netloc.rpartition("@")
        sentinels = tuple(_address(host) for host in hosts.split(","))
        service, _, db = parts.path.strip("/").partition("/")
        if not service:
            raise ValueError("name the master's service: redis+sentinel://host:port/service_name")
        if db and not db.isdigit():
            raise ValueError(f"the database after the service name must be a number, not {db!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        tls = parts.scheme.startswith("rediss")
        master_url = "{}://{}127.0.0.1:0/{}".format(
            "rediss" if tls else "redis",
            f"{user_info}@" if user_info else "",
            db or "0",
        )
        passed_on = urlencode([(k, v) for k, v in query if k not in _SENTINEL_QUERY])
        if passed_on:
            master_url += f"?{passed_on}"
        master = _client_options(master_url)
        own = dict(query)
        # The sentinels take the master's TLS settings and, unless told otherwise, its password.
        sentinel_options = {k: v for k, v in master.items() if k not in ("db", "username")}
        if "sentinel_password" in own:  # empty: the sentinels ask for none
            sentinel_options["password"] = own["sentinel_password"] or None
        if "sentinel_username" in own:
            sentinel_options["username"] = own["sentinel_username"]
        return cls(sentinels, service, master_url, sentinel_options)

    @property
    def master_options(self) -> dict[str, Any]:
        """redis-py connection options for the master, without its address."""
        return _client_options(self.master_url)


def _client_options(url: str) -> dict[str, Any]:
    """What `url` says as keyword arguments of a redis-py client or Sentinel pool, without
    the address: TLS as `ssl=True`, since each picks its own connection class for it."""
    options: dict[str, Any] = dict(parse_url(url))
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True
    return options


def _address(host: str) -> tuple[str, int]:
    if not host:
        raise ValueError("a sentinel's address is empty: list them as host:port,host:port")
    if host.startswith("["):  # an IPv6 address: [::1]:26379
        name, _, port = host[1:].partition("]")
        port = port.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    if not port:
        return name, SENTINEL_PORT
    if not port.isdigit():
        raise ValueError(f"port {port!r} of sentinel {host!r} is not a number")
    return name, int(port)


@dataclasses.dataclass(frozen=True, slots=True)
class _State:
    """What one sentinel says of the master: its configuration's epoch, the master's address,
    and whether it sees that master up."""

    epoch: int
    address: tuple[str, int]
    usable: bool


class MasterFinder:
    """Finds the master of `url`'s service: every sentinel asked at once, the newest
    configuration's master (then older ones) confirmed by its `ROLE`. A sentinel that is down,
    knows no such service or sees that master down is passed over. Each look opens and closes
    its own connections, so nothing is left open between looks."""

    def __init__(self, url: SentinelURL, *, timeout: float) -> None:
        self.url = url
        self._order = list(url.sentinels)
        self._timeout = timeout
        # The master last found: the one its caller is connected to.
        self.found: tuple[str, int] | None = None

    async def __call__(self) -> tuple[str, int]:
        url = self.url
        errors: list[str] = []
        candidates: list[tuple[int, tuple[str, int], tuple[str, int]]] = []
        for sentinel, state in zip(self._order, await self._states(), strict=True):
            if isinstance(state, BaseException):
                errors.append(_failure(sentinel, state, url.service))
            elif state is None:
                errors.append(f"{_shown(sentinel)} knows no master {url.service!r}")
            elif not state.usable:
                errors.append(f"{_shown(sentinel)} sees {_shown(state.address)} down")
            else:
                candidates.append((state.epoch, state.address, sentinel))
        # The newest configuration first: a sentinel that has not yet heard of a failover
        # still names the old master, which answers as one until it is demoted.
        candidates.sort(key=lambda candidate: -candidate[0])
        tried: set[tuple[str, int]] = set()
        for _, address, sentinel in candidates:
            if address in tried:
                continue
            tried.add(address)
            try:
                role = await self._role(address)
            except (RedisError, OSError) as error:
                errors.append(f"{_shown(address)}: {type(error).__name__}: {error}")
                continue
            if role != "master":
                errors.append(f"{_shown(sentinel)} named {_shown(address)}, whose role is {role}")
                continue
            self.found = address
            return address
        raise MasterNotFoundError(f"no master for {url.service!r}: " + "; ".join(errors))

    async def moved(self) -> bool:
        """Whether the sentinels' newest configuration (the highest config epoch any of them
        reports) names another master than the one found. Every sentinel is asked: the one
        that ran a failover knows first, the others learn it seconds later."""
        if self.found is None:
            return False
        known = [state for state in await self._states() if isinstance(state, _State)]
        if not known:
            return False
        return max(known, key=lambda state: state.epoch).address != self.found

    async def _states(self) -> list[_State | BaseException | None]:
        """What each sentinel says of the service, asked all at once."""
        return await asyncio.gather(
            *(self._state(sentinel) for sentinel in self._order), return_exceptions=True
        )

    async def _state(self, sentinel: tuple[str, int]) -> _State | None:
        client = aioredis.Redis(
            host=sentinel[0], port=sentinel[1], **self._options(self.url.sentinel_options)
        )
        try:
            state = await client.sentinel_master(self.url.service)
        finally:
            await client.aclose()
        if not isinstance(state, dict):
            return None
        return _State(
            int(state["config-epoch"]),
            (_text(state["ip"]), int(state["port"])),
            bool(state.get("is_master"))
            and not state.get("is_sdown")
            and not state.get("is_odown"),
        )

    async def _role(self, address: tuple[str, int]) -> str:
        client = aioredis.Redis(
            host=address[0], port=address[1], **self._options(self.url.master_options)
        )
        try:
            reply = await client.role()
        finally:
            await client.aclose()
        return _text(reply[0]) if reply else "unknown"

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        # Every sentinel must get its turn within the caller's connect timeout.
        share = self._timeout / (len(self._order) + 1)
        return {
            **options,
            "socket_connect_timeout": share,
            "socket_timeout": share,
            # One try each: the next sentinel is the retry.
            "retry": Retry(NoBackoff(), 0),
        }


class _FoundBy(Sentinel):
    """redis-py's Sentinel client, finding the master the way the decision path does."""

    def __init__(self, find: MasterFinder, **options: Any) -> None:
        super().__init__([], **options)  # type: ignore[no-untyped-call]
        self._find = find

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        return await self._find()


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def client_for(url: str, **options: Any) -> aioredis.Redis:
    """A redis-py client for a store URL: `redis://`, `rediss://`, `unix://`, or Sentinel's,
    whose connections follow the master."""
    if not is_sentinel(url):
        return aioredis.Redis.from_url(url, **options)
    parsed = SentinelURL.parse(url)
    find = MasterFinder(parsed, timeout=options.get("socket_connect_timeout") or 1.0)
    client: aioredis.Redis = _FoundBy(find).master_for(
        parsed.service, redis_class=aioredis.Redis, **parsed.master_options, **options
    )
    return client


def connections_for(
    url: str, *, connect_timeout: float, socket_timeout: float, handshake: tuple[bytes, ...]
) -> tuple[Pipe, aioredis.Redis]:
    """The decision path's connection and the redis-py client for a store URL. With Sentinel
    both find the master anew on every connection, and the decision path asks the sentinels
    every second whether it is still theirs: a master they replaced may not know it yet (a
    planned failover, a master that stalled and came back) and takes writes until they demote
    it, about 8 s later. When they name another, the pipe and the client's pooled connections
    both leave it."""
    client = client_for(url, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout)
    if not is_sentinel(url):
        return Pipe(url, connect_timeout=connect_timeout, handshake=handshake), client
    find = MasterFinder(SentinelURL.parse(url), timeout=connect_timeout)
    address: Callable[[], Awaitable[tuple[str, int]]] = find

    async def moved() -> bool:
        if not await find.moved():
            return False
        await client.connection_pool.disconnect()
        return True

    pipe = Pipe(
        find.url.master_url,
        connect_timeout=connect_timeout,
        handshake=handshake,
        address=address,
        moved=moved,
        recheck=MASTER_RECHECK_SECONDS,
    )
    return pipe, client


def direct_url(url: str, *, timeout: float = 1.0) -> str:
    """`url` itself, or for a Sentinel URL the `redis://` URL of the master it names now: for
    tools that measure one server (`throttle bench`)."""
    if not is_sentinel(url):
        return url
    parsed = SentinelURL.parse(url)
    host, port = asyncio.run(MasterFinder(parsed, timeout=timeout)())
    return parsed.master_url.replace("127.0.0.1:0", f"{host}:{port}", 1)


def _failure(sentinel: tuple[str, int], error: BaseException, service: str) -> str:
    if "no such master" in str(error).lower():
        return f"{_shown(sentinel)} knows no master {service!r}"
    return f"{_shown(sentinel)}: {type(error).__name__}: {error}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shown(address: tuple[str, int]) -> str:
    host = quote(address[0], safe=".:-[]")
    return f"{host}:{address[1]}"
