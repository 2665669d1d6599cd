"""Store URLs as they may be shown: in errors, logs and the CLI's output."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit


def redacted_url(url: str) -> str:
    """`url` without a password, in its user part or its query, so it can be shown."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, host = netloc.rpartition("@")
        user = user_info.partition(":")[0]
        netloc = f"{user}@{host}" if user else host
    query = urlencode(
        [
            (name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if "password" not in name.lower()  # sentinel_password too
        ]
    )
    # Rebuilt by hand: urlunsplit would turn `unix:///path` into `unix:/path`.
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{shown}?{query}" if query else shown
