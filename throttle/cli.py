"""The `throttle` command. One subcommand per job: `init` writes the default policy, `check`
validates policy files, `simulate` replays traffic through them, `audit` summarizes what was
decided, `person` carries out a person's data request, `bench` measures the middleware.

Each subcommand is a function that adds its parser and one that runs it, so check, simulate
and audit can join `bench` without touching the others. Every command exits with the same
statuses, named below; none ends in a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TextIO

from throttle.errors import ConfigurationError, ThrottleError

Command = Callable[[argparse.Namespace], int]

# PyPI's `throttle` is another project; this one is published as throttle-asgi.
DISTRIBUTION = "throttle-asgi"

OK = 0
# What the command was given cannot be used: a policy or trace with problems, a file that
# cannot be read or written, a Redis that does not answer, a missing redis-server.
BAD_INPUT = 1
# The command line itself is wrong (argparse's own status for an unknown option or value).
USAGE = 2
# throttle stopped on an error it did not expect: one line says what, for a bug report.
FAILED = 3
INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT
# The reader of the output went away (`| head`): what a shell reports for a tool that
# SIGPIPE ended, as `yes | head` does.
OUTPUT_CLOSED = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run `throttle <command> ...`; returns the exit status (also when called as a script)."""
    given = list(sys.argv[1:] if argv is None else argv)
    name = "throttle"
    try:
        try:
            arguments = _parser().parse_args(given)  # exits for --help, --version, usage
            arguments.given = given
            name = f"throttle {arguments.name}"
            command: Command = arguments.command
            status = command(arguments)
        finally:
            # A reader that went away shows here, not in the flush Python makes at exit.
            sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The sockets the commands use raise their clients' own errors (redis, httpx), so a
        # broken pipe that reaches here is standard output's: stop quietly, like other tools.
        _close(sys.stdout)
        return OUTPUT_CLOSED
    except KeyboardInterrupt:
        return INTERRUPTED
    except ThrottleError as error:
        _say(f"{name}: {error}")
        return BAD_INPUT
    except Exception as error:
        _say(f"{name}: stopped by an unexpected error (please report it): {_one_line(error)}")
        return FAILED


def _say(line: str) -> None:
    """One line on standard error, which may itself be a closed pipe (`2>&1 | head`)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        _close(sys.stderr)


def _close(stream: TextIO) -> None:
    """Point a closed pipe's descriptor at /dev/null, so that Python's flush at exit, which
    still holds unwritten output, does not print a complaint of its own."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):  # not a file: a test's captured stream
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _one_line(error: BaseException) -> str:
    words = " ".join(str(error).split())
    if len(words) > 300:
        words = words[:299] + "…"
    return f"{type(error).__name__}: {words}" if words else type(error).__name__


def _version() -> str:
    try:
        return f"throttle {metadata.version(DISTRIBUTION)} ({DISTRIBUTION})"
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return f"throttle (version unknown: {DISTRIBUTION} is not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="throttle",
        description="ASGI middleware that stops over-personalization.",
        epilog="exit status: 0 ok; 1 what it was given cannot be used (a policy, a trace, a "
        "file, a Redis); 2 a usage error; 3 an unexpected error; 141 the reader of its "
        "output went away",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_init(commands)
    _add_check(commands)
    _add_simulate(commands)
    _add_audit(commands)
    _add_person(commands)
    _add_bench(commands)
    return parser


def default_policy() -> Path:
    """The default policy this installation ships: `throttle/policies/` in the wheel (built
    from the checkout's `policies/`), or the checkout's own `policies/` in development."""
    package = Path(__file__).resolve().parent
    for folder in (package / "policies", package.parent / "policies"):
        if (folder / "default.toml").is_file():
            return folder / "default.toml"
    raise FileNotFoundError(f"no policies/default.toml in or beside {package}")


def _add_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser(
        "init",
        help="write the default policy to a file, to edit and use",
        description=(
            "Write the policy throttle ships (every key set, with a comment on each and the "
            "research behind its value) to PATH, for the middleware's policy=PATH. A file "
            "already at PATH is kept unless --force."
        ),
    )
    init.add_argument(
        "path",
        nargs="?",
        default="policies/default.toml",
        metavar="PATH",
        help='where to write it (default: policies/default.toml); "-" for standard output',
    )
    init.add_argument("--force", action="store_true", help="replace a file already at PATH")
    init.set_defaults(command=_init, name="init")


def _init(arguments: argparse.Namespace) -> int:
    text = default_policy().read_text(encoding="utf-8")
    if arguments.path == "-":
        sys.stdout.write(text)
        return OK
    path = Path(arguments.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w" if arguments.force else "x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        _say(f"throttle init: {path} already exists; --force replaces it")
        return BAD_INPUT
    except OSError as error:
        _say(f"throttle init: {path}: cannot be written: {error.strerror or error}")
        return BAD_INPUT
    print(f"wrote the default policy to {path}; after an edit: throttle check {path}")
    return OK


def _add_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check",
        help="validate policy files and summarize what they do",
        description=(
            "Validate each policy file. A good one gets a short summary in plain words; a bad "
            "one gets every problem as FILE:LINE: KEY: what is wrong. Exits 1 if any is bad."
        ),
    )
    check.add_argument("policies", nargs="+", metavar="POLICY", help="policy files (TOML)")
    check.add_argument(
        "--with",
        dest="overrides",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="an override file layered on each POLICY (repeat for more, in order); the "
        "summary is then the effective policy",
    )
    check.add_argument(
        "--markets",
        action="append",
        default=[],
        metavar="PATH",
        help="a market's override file, or a directory of them (one market per file, named "
        "by its stem), each layered on each POLICY and checked in turn (repeatable)",
    )
    check.set_defaults(command=_check, name="check")


def _check(arguments: argparse.Namespace) -> int:
    from throttle.check import check
    from throttle.markets import market_files

    markets = market_files(arguments.markets) if arguments.markets else {}
    status = check(arguments.policies, sys.stdout, overrides=arguments.overrides)
    for name, path in markets.items():
        print(f"\nmarket {name}:", file=sys.stdout)
        layers = [*arguments.overrides, str(path)]
        status = max(status, check(arguments.policies, sys.stdout, overrides=layers))
    return status


def _add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="replay a trace of messages through a policy and report what it does",
        description=(
            "Replay TRACE (JSON lines of timestamped messages; see examples/trace.py) through "
            "POLICY with the real engine, the memory store and the trace's own clock. Reports "
            "per rule and per campaign: messages personalized, segment content by reason, "
            "creepiness scores, people who hit each cap. A trace line that cannot be used (not "
            "JSON, a bad key, earlier than the line before) is listed as TRACE:LINE: what is "
            "wrong and left out; the report is still made, and the exit status is 1 unless "
            "--skip-bad-lines."
        ),
    )
    simulate.add_argument("policy", metavar="POLICY", help="the policy file (TOML)")
    simulate.add_argument("trace", metavar="TRACE", help='the trace (JSON lines); "-" for stdin')
    simulate.add_argument(
        "--with",
        dest="overrides",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="an override file layered on POLICY (repeat for more, in order)",
    )
    simulate.add_argument(
        "--against",
        metavar="OTHER",
        help="a second policy file, replayed beside POLICY; the report shows both and the change",
    )
    simulate.add_argument(
        "--markets",
        action="append",
        default=[],
        metavar="PATH",
        help="a market's override file, or a directory of them (one market per file, named "
        "by its stem), layered on POLICY (and on OTHER): each trace line's market chooses "
        "(repeatable)",
    )
    simulate.add_argument(
        "--html", type=Path, metavar="FILE", help="also write the report as a page with charts"
    )
    simulate.add_argument("--json", action="store_true", help="print the figures as JSON")
    simulate.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="exit 0 even when some trace lines cannot be used (they are still listed, and "
        "the report says how many it leaves out)",
    )
    simulate.set_defaults(command=_simulate, name="simulate")


def _simulate(arguments: argparse.Namespace) -> int:
    from throttle.markets import market_files
    from throttle.policy import load_policy
    from throttle.simulate import simulate

    files = market_files(arguments.markets) if arguments.markets else {}
    policies = [load_policy(arguments.policy, *arguments.overrides)]
    markets = [
        {
            name: load_policy(arguments.policy, *arguments.overrides, path)
            for name, path in files.items()
        }
    ]
    if arguments.against:
        policies.append(load_policy(arguments.against))
        markets.append({name: load_policy(arguments.against, path) for name, path in files.items()})
    return simulate(
        policies,
        arguments.trace,
        sys.stdout,
        html_path=arguments.html,
        as_json=arguments.json,
        skip_bad_lines=arguments.skip_bad_lines,
        markets=markets,
    )


def _add_audit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="summarize the audit trail of a period, with a fairness view",
        description=(
            "Read the audit trail (every decision, pseudonymized) from Redis and summarize a "
            "period: decisions by outcome, reason, rule, campaign and segment, and the "
            "fallback rate per segment with the ratio of the highest to the lowest, so a "
            "brand can show that throttling does not single out a group."
        ),
    )
    audit.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help=(
            "the Redis the middleware writes to: redis://, Redis behind Sentinel "
            "(redis+sentinel://host:port,.../service) or a cluster (redis+cluster://host:port,...) "
            "(default: $REDIS_URL or redis://127.0.0.1:6379/0)"
        ),
    )
    audit.add_argument("--prefix", default="throttle:", help="the store's key prefix")
    audit.add_argument(
        "--since", metavar="WHEN", help="a duration ago (7d, 24h) or a date (2026-11-01)"
    )
    audit.add_argument("--until", metavar="WHEN", help="the same forms; default: now")
    audit.add_argument(
        "--min-decisions",
        type=_positive(int),
        default=30,
        metavar="N",
        help="segments with fewer decisions are left out of the fairness ratio (default 30)",
    )
    audit.add_argument("--json", action="store_true", help="print the figures as JSON")
    audit.set_defaults(command=_audit, name="audit")


def _audit(arguments: argparse.Namespace) -> int:
    import asyncio
    import time

    from throttle.audit_summary import audit, parse_since

    now = time.time()
    try:
        since = parse_since(arguments.since, now) if arguments.since else None
        until = parse_since(arguments.until, now) if arguments.until else None
    except ValueError as error:
        _say(f"throttle audit: {error}")
        return USAGE
    return asyncio.run(
        audit(
            arguments.redis_url,
            prefix=arguments.prefix,
            since_ms=since,
            until_ms=until,
            out=sys.stdout,
            as_json=arguments.json,
            min_decisions=int(arguments.min_decisions),
        )
    )


def _add_person(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    person = commands.add_parser(
        "person",
        help="a person's data request, by support staff: export, erase, level, consents",
        description=(
            "Carry out a data request for one person, in the Redis the app uses: export "
            "everything held about them, erase it, or read or change their level or "
            "consents. Each request is written to the audit trail first (the action, the "
            "operator, the time, the person's audit token; never their id)."
        ),
    )
    person.add_argument("action", choices=("export", "erase", "level", "consents"))
    person.add_argument("--id", required=True, metavar="USER", help="the person's user id")
    person.add_argument("--operator", metavar="NAME", help="who makes the request (default: $USER)")
    person.add_argument(
        "--policy",
        action="append",
        required=True,
        type=Path,
        metavar="FILE",
        help="the app's policy file (repeat for a base and its overrides, in layer order)",
    )
    person.add_argument("--store", metavar="URL", help="the app's Redis (default: $REDIS_URL)")
    person.add_argument("--prefix", default="throttle:", help="the store's key prefix")
    person.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help="a file holding the app's secret (default: $THROTTLE_SECRET)",
    )
    person.add_argument(
        "--set",
        metavar="LEVEL",
        choices=("off", "minimal", "standard", "full"),
        help="level: set it",
    )
    person.add_argument("--give", metavar="CATEGORY", help="consents: record explicit consent")
    person.add_argument("--withdraw", metavar="CATEGORY", help="consents: withdraw it")
    person.add_argument("--json", action="store_true", help="print the answer as JSON")
    person.set_defaults(command=_person, name="person")


def _person(arguments: argparse.Namespace) -> int:
    from throttle.support import BadRequest, UsageError, person_command

    try:
        return person_command(arguments, sys.stdout)
    except UsageError as error:
        _say(f"throttle person: {error}")
        return USAGE
    except BadRequest as error:
        _say(f"throttle person: {error}")
        return BAD_INPUT


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="load-test throttle beside the bare app and its peers",
        description=(
            "Serve GET /offer under uvicorn bare, behind throttle and behind slowapi and "
            "limits, all on one Redis; drive each with wrk in alternating rounds; then time "
            "the engine alone and weigh a person's state in Redis. Prints one table."
        ),
    )
    bench.add_argument("--smoke", action="store_true", help="a tiny run: checks that it works")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument(
        "--duration",
        type=_positive(float),
        metavar="S",
        help="seconds per run of each arm (default 10; smoke 1)",
    )
    bench.add_argument(
        "--rounds",
        type=_positive(int),
        metavar="N",
        help="rounds of every arm (default 5; smoke 1)",
    )
    bench.add_argument(
        "--concurrency",
        type=_positive(int),
        metavar="C",
        help="open connections (default 32; smoke 4)",
    )
    bench.add_argument(
        "--people",
        type=_positive(int),
        metavar="N",
        help="distinct people sending requests, and people weighed in Redis "
        "(default 100000; smoke 1000)",
    )
    bench.add_argument(
        "--rate",
        type=_positive(float),
        metavar="R",
        help="requests per second of the open-loop runs (default 1000; smoke 200)",
    )
    bench.add_argument(
        "--redis-url",
        metavar="URL",
        help="a Redis you own (default: a private redis-server, started and "
        "stopped); the run's keys are deleted afterwards",
    )
    bench.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="the load generators: wrk and h2load, or Python clients where they are missing "
        "(python: Python clients only)",
    )
    bench.add_argument(
        "--policy",
        type=Path,
        help="the policy file (default: the one throttle ships, as `throttle init` writes it)",
    )
    bench.set_defaults(command=_bench, name="bench")


# What `throttle bench` runs its arms with: the `bench` extra.
_BENCH_MODULES = ("uvicorn", "httptools", "slowapi", "limits", "coredis")


def _bench(arguments: argparse.Namespace) -> int:
    missing = [name for name in _BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"the bench needs {', '.join(missing)}: pip install 'throttle-asgi[bench]'"
        )
    from throttle.bench import report, runner

    chosen = {
        "duration": arguments.duration,
        "rounds": arguments.rounds,
        "concurrency": arguments.concurrency,
        "people": arguments.people,
        "memory_people": arguments.people,
        "rate": arguments.rate,
        # The shipped policy, wherever the package is installed.
        "policy": arguments.policy or default_policy(),
    }
    options = dataclasses.replace(
        runner.SMOKE if arguments.smoke else runner.Options(),
        redis_url=arguments.redis_url,
        generator=arguments.generator,
        command=shlex.join(["throttle", *arguments.given]),
        **{name: value for name, value in chosen.items() if value is not None},
    )
    results = runner.run(options, progress=sys.stderr)
    print(report.as_json(results) if arguments.json else report.table(results))
    return OK


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
