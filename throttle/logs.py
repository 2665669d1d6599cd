"""Log lines as JSON: one object per line, with the facts every throttle log call puts in `extra=`.

Each module logs to its own logger (`throttle.engine`, `throttle.faults`, `throttle.store.redis`,
`throttle.middleware`, `throttle.reload`), the message in words and its facts as fields, never
a raw id or a pseudonym. This formatter writes them as one JSON object per line:

```python
import logging
from throttle.logs import JsonFormatter

handler = logging.StreamHandler()
handler.setFormatter(JsonFormatter())
logging.getLogger("throttle").addHandler(handler)
```

```json
{"time": "2026-12-01T16:02:11.532Z", "level": "WARNING", "logger": "throttle.faults",
 "message": "throttle: store unavailable (...)", "why": "ConnectionRefusedError: ...",
 "retry_after": 1.0}
```

With uvicorn, the same in a `--log-config` file: `"formatters": {"json": {"()":
"throttle.logs.JsonFormatter"}}`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# What every LogRecord carries; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: `time` (UTC, ISO 8601 with milliseconds), `level`,
    `logger`, `message`, then each field given in `extra=`, then `exception` (the traceback)
    when there is one. A field JSON cannot hold is written as its `str()`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                line.setdefault(name, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
