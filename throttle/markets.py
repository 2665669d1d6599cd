"""Policies per market: several policies loaded at once, one chosen for each decision.

A market is a name (`"eu"`, `"us"`) and its policy: override files layered on the base
policy, as `policy=[base, override]` layers them, or a `Policy`. A directory of override files
makes one market per file, named by the file's stem (`policies/markets/eu.toml` is `eu`).
The base policy itself decides for requests of no market, or of a market without a policy.

```python
ThrottleMiddleware(app, policy="policies/default.toml", markets="policies/markets",
                   market=lambda scope: "eu" if country(scope) in EU else "us")
```

Every market's files are watched for edits (and the base's, which each market layers on), and
reloaded one market at a time; a bad edit keeps that market's policy in force.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from throttle.errors import ConfigurationError
from throttle.policy import Policy, load_policy
from throttle.reload import PolicyWatcher

MarketPolicy = str | Path | Sequence[str | Path] | Policy
MarketSet = str | Path | Mapping[str, MarketPolicy]
_MAX_NAME = 64


def market_sources(markets: MarketSet) -> dict[str, tuple[Path, ...] | Policy]:
    """Each market's override files (or its `Policy`), by name; a directory is read for its
    `*.toml` files, each one market named by its stem (see `market_files`).

    Raises `ConfigurationError` for a directory without policies, a market without files or a
    name that cannot be one (empty, longer than 64 characters, not printable).
    """
    if isinstance(markets, str | Path):
        markets = dict(market_files([markets]))
    sources: dict[str, tuple[Path, ...] | Policy] = {}
    for name, given in markets.items():
        if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable():
            raise ConfigurationError(
                f"markets: {name!r} cannot name a market: use up to {_MAX_NAME} printable "
                "characters"
            )
        if isinstance(given, Policy):
            sources[name] = given
        elif isinstance(given, str | Path):
            sources[name] = (Path(given),)
        else:
            paths = tuple(Path(path) for path in given)
            if not paths:
                raise ConfigurationError(f"markets: {name!r} names no policy file")
            sources[name] = paths
    if not sources:
        raise ConfigurationError("markets: give at least one market")
    return sources


def market_files(paths: Sequence[str | Path]) -> dict[str, Path]:
    """Markets' override files by market name: each path a file (named by its stem) or a
    directory of them. Raises `ConfigurationError` for a path that is neither, a directory
    without policies, or two files of one name."""
    files: dict[str, Path] = {}
    for given in paths:
        path = Path(given)
        found = sorted(path.glob("*.toml")) if path.is_dir() else [path]
        if path.is_dir() and not found:
            raise ConfigurationError(f"markets: {path} holds no *.toml policy file")
        if not path.exists():
            raise ConfigurationError(f"markets: {path} does not exist")
        for file in found:
            if file.stem in files:
                raise ConfigurationError(
                    f"markets: {files[file.stem]} and {file} both name market {file.stem!r}"
                )
            files[file.stem] = file
    return files


def load_markets(
    base: Sequence[Path] | None, sources: Mapping[str, tuple[Path, ...] | Policy]
) -> dict[str, Policy]:
    """Each market's policy: its files layered on `base` (the base policy's files), or its
    `Policy` as given. Raises `PolicyError` for a file that cannot be used, and
    `ConfigurationError` for files with no base files to layer on."""
    loaded = {}
    for name, source in sources.items():
        if isinstance(source, Policy):
            loaded[name] = source
        elif base is None:
            raise ConfigurationError(
                f"markets: {name!r} is given as files, to layer on the base policy's files; "
                "give policy= as files too, or each market as a Policy"
            )
        else:
            loaded[name] = load_policy(*base, *source)
    return loaded


def check_market(market: object, markets: Sequence[str]) -> None:
    """A market named once for all at start-up must have a policy."""
    if not isinstance(market, str) or market not in markets:
        raise ConfigurationError(
            f"market {market!r} has no policy; the markets are {', '.join(markets)}"
        )


class MarketWatcher:
    """Looks at every market's files (its base's included) for edits; see `PolicyWatcher`."""

    def __init__(
        self,
        base: Sequence[Path],
        sources: Mapping[str, tuple[Path, ...] | Policy],
        loaded: Mapping[str, Policy],
        *,
        interval: float,
    ) -> None:
        self._watchers = {
            name: PolicyWatcher((*base, *source), loaded[name], interval=interval)
            for name, source in sources.items()
            if not isinstance(source, Policy)
        }

    @property
    def on_refused(self) -> Callable[[str, str, str], None] | None:
        """Hears of each refused edit of any market's files (see `PolicyWatcher.on_refused`)."""
        return next((w.on_refused for w in self._watchers.values()), None)

    @on_refused.setter
    def on_refused(self, listener: Callable[[str, str, str], None] | None) -> None:
        for watcher in self._watchers.values():
            watcher.on_refused = listener

    @property
    def watchers(self) -> tuple[PolicyWatcher, ...]:
        """One watcher per market read from files (metrics count their reloads)."""
        return tuple(self._watchers.values())

    def poll(self) -> dict[str, Policy]:
        """The markets whose files changed into a valid policy, with it."""
        changed = {}
        for name, watcher in self._watchers.items():
            policy = watcher.poll()
            if policy is not None:
                changed[name] = policy
        return changed
