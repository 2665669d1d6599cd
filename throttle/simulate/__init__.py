"""`throttle simulate`: replay a trace of messages through policies and report what they do.

trace.py    reading JSON lines of timestamped messages
replay.py   the real engine over the memory store, on the trace's clock
report.py   the text report (and its figures as data)
html.py     the same as a self-contained page with charts
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
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
    skip_bad_lines: bool = False,
    errors: TextIO | None = None,
    markets: Sequence[Mapping[str, Policy]] = (),
) -> int:
    """Replay `trace` (a path, or "-" for standard input) and report; returns the exit status.

    Lines that cannot be used are reported on `errors` as TRACE:LINE: what is wrong, and left
    out of the replay; the report says how many. Exits 1 when there were any, unless
    `skip_bad_lines`, and when no line was usable at all. `html_path` is opened before the
    replay, so a place that cannot be written is refused before any work. `errors` is
    standard error unless given. `markets`, one mapping per policy, are the policies each
    line's `market` chooses (see `replay`).
    """
    errors = sys.stderr if errors is None else errors  # as it is now, not at import
    name = "standard input" if trace == "-" else trace
    try:
        source: TextIO = (
            sys.stdin if trace == "-" else open(trace, encoding="utf-8")  # noqa: SIM115
        )
    except OSError as error:
        print(f"{name}: cannot be read: {error.strerror or error}", file=errors)
        return 1
    with source, contextlib.ExitStack() as cleanup:
        page = None
        if html_path is not None:
            page = _open_page(html_path, cleanup, errors)
            if page is None:
                return 1
        reader = TraceReader(source)
        try:
            result = asyncio.run(replay(policies, reader, markets))
        except UnicodeDecodeError as error:
            print(f"{name}: is not UTF-8 text: {error.reason}", file=errors)
            return 1
        result.skipped_lines = reader.skipped
        for problem in reader.problems:
            print(f"{name}:{problem.line}: {problem.message}", file=errors)
        if reader.skipped > len(reader.problems):
            more = reader.skipped - len(reader.problems)
            print(f"{name}: {more:,} more lines cannot be used", file=errors)
        if not result.tallies[0].messages:
            print(f"{name}: no message to replay", file=errors)
            return 1
        if as_json:
            print(json.dumps(report.as_dict(result, name), indent=2), file=out)
        else:
            print(report.text(result, name), file=out)
        if page is not None and html_path is not None:
            page.truncate(0)
            page.write(html.page(result, name))
            page.close()
            cleanup.pop_all()
            print(f"report written to {html_path}", file=errors)
    if reader.skipped and not skip_bad_lines:
        print(
            f"{name}: the report leaves out {reader.skipped:,} lines that cannot be used; "
            "fix them, or pass --skip-bad-lines to accept that",
            file=errors,
        )
        return 1
    return 0


def _open_page(path: Path, cleanup: contextlib.ExitStack, errors: TextIO) -> TextIO | None:
    """Open the HTML report's file before the replay; if the replay then stops, leave what
    was there (or nothing, if the file is new) rather than an empty page."""
    existed = path.exists()
    try:
        # Appending opens the same places writing does, and leaves an old page as it was.
        page = open(path, "a", encoding="utf-8")  # noqa: SIM115
    except OSError as error:
        print(f"{path}: cannot be written: {error.strerror or error}", file=errors)
        return None
    if not existed:
        cleanup.callback(path.unlink, missing_ok=True)
    cleanup.callback(page.close)
    return page
