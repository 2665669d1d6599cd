"""A real uvicorn server in the test's own event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from tests.redis_server import free_port

# Guards against a hang, not bounds on speed: generous enough for a machine that is busy.
_START_SECONDS = 60.0
_STOP_SECONDS = 60.0


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, *, log_level: str = "warning") -> AsyncIterator[str]:
    """`app` under uvicorn, as `uvicorn module:app` runs it (lifespan on); yields its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(_START_SECONDS):
            while not server.started:
                if task.done():  # it stopped before it started: its error is the test's
                    task.result()
                    raise AssertionError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=_STOP_SECONDS)
