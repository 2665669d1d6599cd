"""Alerts: conditions ops want to hear about, posted to a webhook and written to the log.

rates.py     decisions counted in buckets, and the rule that says a rate has risen
quiet.py     at most one delivery per alert per quiet period, across every worker
webhook.py   posting from a background task: a bounded queue, timeouts, bounded retries
monitor.py   the live side: one background task per worker, watching its engine
"""

from __future__ import annotations

from throttle.alerts.monitor import Alert, AlertMonitor, RateSource
from throttle.alerts.quiet import QuietPeriods
from throttle.alerts.rates import Bucket, LocalCounts, Rise, risen
from throttle.alerts.webhook import WebhookSender, httpx_module

__all__ = [
    "Alert",
    "AlertMonitor",
    "Bucket",
    "LocalCounts",
    "QuietPeriods",
    "RateSource",
    "Rise",
    "WebhookSender",
    "httpx_module",
    "risen",
]
