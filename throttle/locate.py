"""Where a key stands in a TOML text, so that errors can name the line a person should edit.

tomllib gives values but no positions. This reads the text line by line as TOML lays it out:
table headers, arrays of tables, `key = value` lines with bare, quoted or dotted keys, and the
keys of one-line inline tables. Multi-line strings and arrays are skipped over, not parsed.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(#.*)?$")
_ASSIGNMENT = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_INLINE_KEY = re.compile(rf"(?:^|[{{,])\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY)


def key_lines(text: str) -> dict[Path, int]:
    """Every key path the text defines, mapped to its 1-based line number."""
    lines: dict[Path, int] = {}
    table: Path = ()
    arrays: dict[Path, int] = {}
    open_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if open_multiline is not None:
            if open_multiline in line:
                open_multiline = None
            continue
        if header := _HEADER.match(line):
            path = _parts(header[2])
            if header[1] == "[[":
                arrays[path] = arrays.get(path, -1) + 1
                table = (*path, arrays[path])
            else:
                table = _within_arrays(path, arrays)
            lines.setdefault(table, number)
            continue
        if assignment := _ASSIGNMENT.match(line):
            path = (*table, *_parts(assignment[1]))
            lines.setdefault(path, number)
            value = assignment[2].strip()
            if value.startswith("{"):
                for inner in _INLINE_KEY.finditer(value):
                    lines.setdefault((*path, *_parts(inner[1])), number)
            for quote in ('"""', "'''"):
                if value.startswith(quote) and value.count(quote) == 1:
                    open_multiline = quote
    return lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of `path`, or of the nearest enclosing table that the text writes down."""
    for end in range(len(path), 0, -1):
        if (found := lines.get(path[:end])) is not None:
            return found
    return None


def _parts(dotted: str) -> Path:
    return tuple(_unquote(part) for part in _PART.findall(dotted))


def _unquote(part: str) -> str:
    if part[:1] in ('"', "'"):
        return part[1:-1]
    return part


def _within_arrays(path: Path, arrays: dict[Path, int]) -> Path:
    """`[caps.extra]` after the third `[[caps]]` belongs to caps[2]."""
    placed: Path = ()
    for part in path:
        placed = (*placed, part)
        if placed in arrays:
            placed = (*placed, arrays[placed])
    return placed
