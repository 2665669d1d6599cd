from __future__ import annotations

import throttle


def test_all_exports_every_public_name_and_only_those() -> None:
    # (ruff's RUF022 keeps __all__ sorted)
    public = {name for name in dir(throttle) if not name.startswith("_")}
    modules = {
        "consent", "engine", "errors", "fallback", "faults", "message", "middleware", "periods",
        "policy", "simulate", "tcf", "audit", "audit_summary", "explain", "privacy",
        "reload", "bench", "check", "cli", "locate", "scoring", "store", "decision", "snapshot",
    }  # fmt: skip
    assert set(throttle.__all__) == public - modules
