"""Segment content: what a person gets instead, for a group large enough to hide them."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from throttle.policy import Fallback

if TYPE_CHECKING:
    from throttle.decision import Decision

EVERYONE = ""


@dataclass(frozen=True, slots=True)
class SegmentContent:
    """A body and its media type, to send in place of personalized content.

    ```python
    async def fallback(request: FallbackRequest) -> SegmentContent | None:
        return SegmentContent.json({"offer": offers_for(request.segment)})
    ```
    """

    body: bytes
    media_type: str

    @classmethod
    def json(cls, content: Any) -> SegmentContent:
        return cls(json.dumps(content, separators=(",", ":")).encode(), "application/json")

    @property
    def etag(self) -> str:
        return '"' + hashlib.blake2b(self.body, digest_size=12).hexdigest() + '"'


@dataclass(frozen=True, slots=True)
class FallbackRequest:
    """What a fallback provider is asked for: content for `campaign` in `segment`.

    `segment` is already k-anonymous ("" is everyone). `media_type` is the type of the
    personalized response being replaced; `scope` is the ASGI scope, for locale and path.
    When `outcome` is `"category"`, the policy allows content about the message's `category`
    (running shoes rather than the shoe the person viewed); otherwise `"segment"`.
    """

    campaign: str
    segment: str
    channel: str
    media_type: str
    decision: Decision
    scope: Mapping[str, Any]

    @property
    def outcome(self) -> str:
        return self.decision.outcome

    @property
    def category(self) -> str:
        return self.decision.category


FallbackProvider = Callable[[FallbackRequest], Awaitable[SegmentContent | None]]


@functools.lru_cache(maxsize=4096)
def lineage(segment: str) -> tuple[str, ...]:
    """`"eu/de/berlin"` -> `("eu/de/berlin", "eu/de", "eu")`: the segment and its ancestors."""
    if not segment:
        return ()
    parts = segment.split("/")
    return tuple("/".join(parts[:n]) for n in range(len(parts), 0, -1))


def k_anonymous(segment: str, sizes: Mapping[str, int], k: int) -> str:
    """The narrowest of the segment and its ancestors that has seen at least `k` people."""
    for candidate in lineage(segment):
        if sizes.get(candidate, 0) >= k:
            return candidate
    return EVERYONE


def policy_content(fallback: Fallback, campaign: str) -> SegmentContent | None:
    content = fallback.content.get(campaign) or fallback.content.get("*")
    if content is None:
        return None
    return SegmentContent(content.body.encode(), content.media_type)


def empty_document(media_type: str) -> SegmentContent:
    """An empty document of the given type: `{}` for JSON, an empty body otherwise."""
    essence = media_type.split(";", 1)[0].strip().lower()
    if essence == "application/json" or essence.endswith("+json"):
        return SegmentContent(b"{}", media_type)
    if essence == "text/html":
        return SegmentContent(b"<!DOCTYPE html>\n<html></html>\n", media_type)
    return SegmentContent(b"", media_type or "application/octet-stream")
