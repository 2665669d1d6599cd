"""Data requests by support staff: a person's data exported or erased, their level and
consents read or changed on their behalf, from `throttle person` or the admin routes.

Both answer with what the person's own privacy routes answer (`personal_data.py`). Every
request is written to the audit trail before it is carried out, as a `DataRequest`: the
action (with the level or category it sets), the operator, the time, and the person named by
their audit token, the random token their decisions carry in the trail. Never their id, nor
their pseudonym: after an erasure nothing in the trail links to them, the request that erased
them included. A request whose entry cannot be written is not carried out. Someone of whom
nothing is held has no token, and their requests name nobody (`""`).

```python
from starlette.routing import Mount
from throttle import admin_routes

# Behind the app's own authentication: the operator is the authenticated user, and their
# credentials must carry the scope "throttle:admin".
app = Starlette(routes=[..., Mount("/admin/people", routes=admin_routes())], middleware=[...])
```

    POST /export    {"id": "user-42"}                     everything held about them
    POST /erase     {"id": "user-42"}                     erase it
    POST /level     {"id": "user-42"} or with "level": "off"           read or set their level
    POST /consents  {"id": "user-42"} or with "give" or "withdraw": "health"

Each body may name the person's `"market"`, whose policy gives the default level and the
special categories (see `throttle.markets`); without one, the default policy's.

The id travels in the body, never in the URL, so it stays out of access logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import msgpack
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from throttle import personal_data
from throttle.engine import Engine
from throttle.errors import ConfigurationError, StoreUnavailable
from throttle.middleware import MAX_ID_LENGTH, authenticated_user, secret_key
from throttle.policy import load_policy
from throttle.privacy import Refusal, answer, middleware_of, small_json
from throttle.store import SHARED_SCHEMES, open_store
from throttle.store.base import AuditLimits
from throttle.store.url import redacted_url

# What staff may do, and what each needs besides the person: a level, a category, or nothing.
ACTIONS = {
    "export": None,
    "erase": None,
    "level": None,
    "set-level": "level",
    "consents": None,
    "give-consent": "category",
    "withdraw-consent": "category",
}
ADMIN_SCOPE = "throttle:admin"
_MAX_OPERATOR_LENGTH = 128


class BadRequest(ValueError):
    """A data request that cannot be carried out as given: nothing was recorded or done."""


@dataclass(frozen=True, slots=True)
class DataRequest:
    """One request by support staff, as the audit trail keeps it.

    - `time_ms`: when it was made, ms since the Unix epoch.
    - `person`: the person's audit token, `""` when nothing was held of them.
    - `action`: one of `ACTIONS`; `value` the level or category it sets, else `None`.
    - `operator`: who made it (a staff member's name, never a customer's id).
    """

    time_ms: int
    person: str
    action: str
    value: str | None
    operator: str

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(
            [self.time_ms, self.person, self.action, self.value, self.operator]
        )
        return packed

    @classmethod
    def unpack(cls, data: bytes) -> DataRequest:
        """A request from `pack()`'s bytes; raises `ValueError` for bytes that are not one."""
        try:
            time_ms, person, action, value, operator = msgpack.unpackb(data, raw=False)
        except Exception as error:  # msgpack raises several types for broken input
            raise ValueError(f"not a data request: {error}") from None
        return cls(time_ms, person, action, value, operator)


async def carry_out(
    engine: Engine,
    action: str,
    person: str,
    *,
    operator: str,
    value: str | None = None,
    market: str | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Record a data request in the audit trail, then carry it out; returns what the person's
    own privacy route would answer. `market` names the market whose policy gives the default
    level and the special categories (`None`: the default policy).

    Raises `BadRequest` (nothing recorded, nothing done) for an unknown action, an id or an
    operator that cannot be one, or a level or category the policy does not know; and
    `StoreUnavailable` when the store cannot be reached (nothing done, or, when the store
    failed after the entry was written, the action may not have been).
    """
    if market is not None and market not in engine.markets:
        raise BadRequest(f"no market {market!r}; the markets are {', '.join(engine.markets)}")
    value = _checked(engine, action, person, operator, value, market)
    limits = _trail_limits(engine)
    token = await engine.store.token_of(engine.pseudonym(person))
    request = DataRequest(math.floor(clock() * 1000), token, action, value, operator)
    await engine.store.append_request(request.pack(), limits)
    return await _ACT[action](engine, person, value, market)


def _checked(
    engine: Engine,
    action: str,
    person: object,
    operator: object,
    value: object,
    market: str | None,
) -> str | None:
    if action not in ACTIONS:
        raise BadRequest(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if not isinstance(person, str) or not person or len(person) > MAX_ID_LENGTH:
        raise BadRequest(f"the id must be a non-empty text of at most {MAX_ID_LENGTH} characters")
    if (
        not isinstance(operator, str)
        or not operator.strip()
        or len(operator) > _MAX_OPERATOR_LENGTH
        or not operator.isprintable()
    ):
        raise BadRequest(
            f"the operator must be a name of at most {_MAX_OPERATOR_LENGTH} printable characters"
        )
    needs = ACTIONS[action]
    try:
        if needs == "level":
            return personal_data.check_level(value)
        if needs == "category":
            if not isinstance(value, str):
                raise BadRequest(f"{action} needs a special category")
            return personal_data.check_category(engine, value, market)
    except (personal_data.UnknownLevel, personal_data.UnknownCategory) as error:
        raise BadRequest(str(error)) from None
    if value is not None:
        raise BadRequest(f"{action} takes no value")
    return None


def _trail_limits(engine: Engine) -> AuditLimits:
    # Requests are kept like decisions, whether or not decisions are (audit.enabled).
    audit = engine.policy.audit
    max_age_ms = math.ceil(audit.max_age * 1000)
    return AuditLimits(audit.max_entries, max_age_ms, audit.per_person, max_age_ms)


Act = Callable[[Engine, str, "str | None", "str | None"], Awaitable[dict[str, Any]]]


async def _export(engine: Engine, person: str, value: str | None, market: str | None) -> Any:
    return await personal_data.export(engine, person, zone=None, market=market)


async def _erase(engine: Engine, person: str, value: str | None, market: str | None) -> Any:
    return await personal_data.erase(engine, person, market=market)


async def _level(engine: Engine, person: str, value: str | None, market: str | None) -> Any:
    return await personal_data.level(engine, person, market=market)


async def _set_level(engine: Engine, person: str, value: str | None, market: str | None) -> Any:
    return await personal_data.set_level(engine, person, value)


async def _consents(engine: Engine, person: str, value: str | None, market: str | None) -> Any:
    return await personal_data.consents(engine, person, market=market)


async def _give(engine: Engine, person: str, value: str | None, market: str | None) -> Any:
    return await personal_data.give_consent(engine, person, str(value), market=market)


async def _withdraw(engine: Engine, person: str, value: str | None, market: str | None) -> Any:
    return await personal_data.withdraw_consent(engine, person, str(value), market=market)


_ACT: dict[str, Act] = {
    "export": _export,
    "erase": _erase,
    "level": _level,
    "set-level": _set_level,
    "consents": _consents,
    "give-consent": _give,
    "withdraw-consent": _withdraw,
}


# The admin routes.

Operator = Callable[[Scope], "str | None"]


def admin_routes(
    *, operator: Operator = authenticated_user, required_scope: str | None = ADMIN_SCOPE
) -> list[BaseRoute]:
    """The routes support staff and data-request platforms call, for a `Mount` behind
    `ThrottleMiddleware` and the app's own authentication.

    - `operator(scope) -> str | None`: who is asking; by default Starlette's authenticated
      user. Nobody: 401.
    - `required_scope`: the credential scope (Starlette's `request.auth.scopes`) a caller must hold,
      `"throttle:admin"` by default, so that a signed-in customer never reaches another
      person's data (403 without it); `None` leaves authorization wholly to the app.
    """
    return _routes(operator, required_scope)


def _routes(operator: Operator, required: str | None) -> list[BaseRoute]:
    def route(path: str, choose: Callable[[dict[str, Any]], tuple[str, Any]]) -> BaseRoute:
        async def endpoint(request: Request) -> Response:
            try:
                middleware = middleware_of(request)
                who = _operator(request, operator, required)
                sent = await small_json(request, '{"id": "user-42"}')
                if not isinstance(sent, dict) or "id" not in sent:
                    raise Refusal(400, 'send a JSON object with the person\'s "id"')
                action, value = choose(sent)
                market = sent.get("market")
                if market is not None and not isinstance(market, str):
                    raise Refusal(400, "market must be a market's name")
                person = sent["id"]
                if isinstance(person, int) and not isinstance(person, bool):
                    person = str(person)  # as `identify` may return an int id
                result = await carry_out(
                    middleware.engine, action, person, operator=who, value=value, market=market
                )
            except Refusal as refusal:
                return answer(refusal.status, {"error": refusal.message})
            except BadRequest as error:
                return answer(400, {"error": str(error)})
            except (StoreUnavailable, OSError, TimeoutError):
                return answer(503, {"error": "the store cannot be reached right now; try again"})
            return answer(200, {"action": action, "operator": who, "result": result})

        endpoint.__name__ = f"admin_{path.strip('/')}"
        return Route(path, endpoint, methods=["POST"])

    return [
        route("/export", lambda sent: _only(sent, "export")),
        route("/erase", lambda sent: _only(sent, "erase")),
        route("/level", _level_action),
        route("/consents", _consent_action),
    ]


def _only(sent: dict[str, Any], action: str, *allowed: str) -> tuple[str, Any]:
    extra = set(sent) - {"id", "market", *allowed}
    if extra:
        raise Refusal(400, f"unknown keys {', '.join(sorted(map(str, extra)))}")
    return action, None


def _level_action(sent: dict[str, Any]) -> tuple[str, Any]:
    _only(sent, "level", "level")
    return ("set-level", sent["level"]) if "level" in sent else ("level", None)


def _consent_action(sent: dict[str, Any]) -> tuple[str, Any]:
    _only(sent, "consents", "give", "withdraw")
    if "give" in sent and "withdraw" in sent:
        raise Refusal(400, "send give or withdraw, not both")
    if "give" in sent:
        return "give-consent", sent["give"]
    if "withdraw" in sent:
        return "withdraw-consent", sent["withdraw"]
    return "consents", None


def _operator(request: Request, operator: Operator, required: str | None) -> str:
    try:
        who = operator(request.scope)
    except Exception:
        who = None
    if not isinstance(who, str) or not who:
        raise Refusal(401, "sign in as a member of staff to make data requests")
    if required is not None:
        auth = request.scope.get("auth")
        if required not in getattr(auth, "scopes", ()):
            raise Refusal(403, f"data requests need the {required!r} permission")
    return who


# `throttle person`.

COMMAND_ACTIONS = ("export", "erase", "level", "consents")


class UsageError(ValueError):
    """The command line asks for something it cannot say (exit status 2)."""


def person_command(arguments: argparse.Namespace, out: TextIO) -> int:
    """Run `throttle person ACTION --id USER`; prints the answer, returns the exit status.

    Raises `UsageError` for a command line that does not hold together, `BadRequest` for a
    value the policy does not know, and `ThrottleError`s for a policy, secret or store that
    cannot be used.
    """
    action, value = _command_action(arguments)
    if not arguments.id:
        raise UsageError("--id must name the person: their user id in the app")
    operator = arguments.operator or os.environ.get("USER") or ""
    if not operator:
        raise UsageError("say who you are: --operator NAME (or set $USER)")
    url = arguments.store or os.environ.get("REDIS_URL") or ""
    if not url:
        raise UsageError("give the app's store: --store redis://… (or set $REDIS_URL)")
    if urlsplit(url).scheme not in SHARED_SCHEMES:
        shared = ", ".join(f"{scheme}://" for scheme in SHARED_SCHEMES)
        raise UsageError(
            f"--store must be the Redis the app uses ({shared}), not {redacted_url(url)!r}"
        )
    secret = _secret(arguments.secret_file)
    policy = load_policy(*arguments.policy)
    store = open_store(url, prefix=arguments.prefix)
    engine = Engine(policy, store, secret=secret_key(secret, store))

    async def run() -> dict[str, Any]:
        try:
            return await carry_out(engine, action, arguments.id, operator=operator, value=value)
        finally:
            await engine.aclose()

    try:
        result = asyncio.run(run())
    except StoreUnavailable as error:
        raise StoreUnavailable(
            f"the store at {redacted_url(url)} cannot be reached: {error}"
        ) from None
    if arguments.json:
        out.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(_TEXT[action](result, value))
    return 0


def _command_action(arguments: argparse.Namespace) -> tuple[str, str | None]:
    action: str = arguments.action
    given = {
        name: getattr(arguments, name)
        for name in ("set", "give", "withdraw")
        if getattr(arguments, name) is not None
    }
    allowed = {"level": {"set"}, "consents": {"give", "withdraw"}}.get(action, set())
    wrong = set(given) - allowed
    if wrong:
        raise UsageError(f"{action} takes no --{' --'.join(sorted(wrong))}")
    if len(given) > 1:
        raise UsageError("give --give or --withdraw, not both")
    if "set" in given:
        return "set-level", given["set"]
    if "give" in given:
        return "give-consent", given["give"]
    if "withdraw" in given:
        return "withdraw-consent", given["withdraw"]
    return action, None


def _secret(secret_file: Path | None) -> str | None:
    if secret_file is None:
        if not os.environ.get("THROTTLE_SECRET"):
            raise ConfigurationError(
                "the app's secret is needed to find the person: set THROTTLE_SECRET or give "
                "--secret-file FILE"
            )
        return None
    try:
        return secret_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{secret_file}: cannot be read: {error}") from None


def _text_export(result: dict[str, Any], value: str | None) -> str:
    level = result["level"]
    lines = [
        f"pseudonym:  {result['pseudonym']}",
        f"level:      {level['level']}"
        + (f" (chosen {level['chosen_at']})" if level["chosen"] else " (the policy's default)"),
        f"opt-out:    {_opt_out_words(result['opt_out'])}",
    ]
    consents = result["special_category_consents"]
    lines.append(
        "consents:   "
        + (", ".join(f"{name} since {since}" for name, since in consents.items()) or "none")
    )
    deliveries = result["deliveries"]
    lines.append(
        "deliveries: "
        + (", ".join(f"{name}: {len(times)}" for name, times in deliveries.items()) or "none")
    )
    budget = result["creepiness_budget"]
    spent = sum(entry["score"] for entry in budget)
    lines.append(f"budget:     {len(budget)} entries, {spent:.3f} spent")
    recent = result["recent_decisions"]
    lines.append(f"recent decisions: {len(recent)}")
    lines += [
        f"  {d['time']}  {d['outcome']:<12}  {d['reason']:<16}  {d['campaign'] or '-'}"
        for d in recent
    ]
    return "\n".join(lines) + "\n"


def _text_erase(result: dict[str, Any], value: str | None) -> str:
    deleted = result["deleted"]
    if not deleted["state"]:
        return "nothing was held about this person\n"
    return (
        f"erased: their record and choices, with {deleted['recent_decisions']} recent "
        "decisions; their audit entries link to nobody now\n"
    )


def _text_level(result: dict[str, Any], value: str | None) -> str:
    how = "chosen" if result["chosen"] else "the policy's default"
    if "meaning" in result:
        return f"level: {result['level']} (set)\n"
    return f"level: {result['level']} ({how})\nopt-out: {_opt_out_words(result['opt_out'])}\n"


def _text_consents(result: dict[str, Any], value: str | None) -> str:
    if "categories" not in result:
        since = f" since {result['since']}" if result.get("since") else ""
        state = f"consented{since}" if result["consented"] else "not consented"
        return f"{result['category']}: {state}\n"
    width = max((len(name) for name in result["categories"]), default=0)
    return "".join(
        f"{name:<{width}}  "
        + (f"consented since {about['since']}" if about["consented"] else "not consented")
        + "\n"
        for name, about in result["categories"].items()
    )


def _opt_out_words(opt_out: dict[str, Any]) -> str:
    if not opt_out["honored"]:
        return "none"
    return f"GPC opt-out since {opt_out['since']}" if opt_out.get("since") else "GPC opt-out"


_TEXT: dict[str, Callable[[dict[str, Any], str | None], str]] = {
    "export": _text_export,
    "erase": _text_erase,
    "level": _text_level,
    "set-level": _text_level,
    "consents": _text_consents,
    "give-consent": _text_consents,
    "withdraw-consent": _text_consents,
}
