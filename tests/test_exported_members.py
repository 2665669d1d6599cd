from __future__ import annotations

import throttle


def test_all_exports_every_public_name_and_only_those() -> None:
    # (ruff's RUF022 keeps __all__ sorted)
    public = {name for name in dir(throttle) if not name.startswith("_")}
    modules = {
        "consent", "engine", "errors", "fallback", "faults", "message", "middleware", "periods",
        "policy", "simulate", "tcf", "audit", "audit_summary", "explain", "privacy",
        "reload", "bench", "check", "cli", "locate", "scoring", "store", "decision", "snapshot",
        "observe", "client", "personal_data", "support", "markets", "opsstate", "dashboard",
        "alerts", "metrics", "logs", "tracing", "envelope", "realtime",
    }  # fmt: skip
    assert set(throttle.__all__) == public - modules


def test_every_reason_has_words_and_a_kind() -> None:
    from throttle.decision import Reason

    kinds = {"limit", "granted", "choice", "law", "fault"}
    for reason in Reason:
        assert reason.label and reason.label != reason.value, reason
        assert reason.kind in kinds, reason


def test_every_reason_has_words_for_the_person() -> None:
    from throttle.decision import Reason
    from throttle.explain import reason_words

    generic = reason_words("no-such-reason", None, "segment")
    for reason in Reason:
        if reason.kind != "granted":
            assert reason_words(reason.value, None, "segment") != generic, reason
