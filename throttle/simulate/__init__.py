"""`throttle simulate`: replay a trace of messages through policies and report what they do.

trace.py    reading JSON lines of timestamped messages
replay.py   the real engine over the memory store, on the trace's clock
report.py   the text report (and its figures as data)
html.py     the same as a self-contained page with charts
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from throttle.policy import Policy
from throttle.simulate import html, report
from throttle.simulate.replay import Replay, Tally, replay
from throttle.simulate.trace import TraceMessage, TraceProblem, TraceReader

__all__ = [
    "Replay",
    "Tally",
    "TraceMessage",
    "TraceProblem",
    "TraceReader",
    "replay",
    "simulate",
]


def simulate(
    policies: Sequence[Policy],
    trace: str,
    out: TextIO,
    *,
    html_path: Path | None = None,
    as_json: bool = False,
    errors: TextIO = sys.stderr,
) -> int:
    """Replay `trace` (a path, or "-" for standard input) and report; returns the exit status.

    Lines that cannot be used are reported on `errors` as TRACE:LINE: what is wrong, and
    skipped; a trace without a single usable line exits 1.
    """
    name = "standard input" if trace == "-" else trace
    try:
        source: TextIO = (
            sys.stdin if trace == "-" else open(trace, encoding="utf-8")  # noqa: SIM115
        )
    except OSError as error:
        print(f"{name}: cannot be read: {error.strerror or error}", file=errors)
        return 1
    with source:
        reader = TraceReader(source)
        try:
            result = asyncio.run(replay(policies, reader))
        except UnicodeDecodeError as error:
            print(f"{name}: is not UTF-8 text: {error.reason}", file=errors)
            return 1
    for problem in reader.problems:
        print(f"{name}:{problem.line}: {problem.message}", file=errors)
    if reader.skipped > len(reader.problems):
        print(f"{name}: {reader.skipped - len(reader.problems):,} more lines skipped", file=errors)
    if not result.tallies[0].messages:
        print(f"{name}: no message to replay", file=errors)
        return 1
    if as_json:
        print(json.dumps(report.as_dict(result, name), indent=2), file=out)
    else:
        print(report.text(result, name), file=out)
    if html_path is not None:
        html_path.write_text(html.page(result, name), encoding="utf-8")
        print(f"report written to {html_path}", file=errors)
    return 0
