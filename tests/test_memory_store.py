"""What only the embedded store does: it forgets by sweeping, as Redis forgets by TTL."""

from __future__ import annotations

from tests.conftest import ManualClock
from tests.helpers import engine, marker
from throttle.store import MemoryStore

HOURLY = '[[caps]]\nname = "hourly"\nper = "user"\nlimit = 3\nwindow = "1h"\n'
# Recent decisions are kept as long as the trail is; without one, records go by their windows.
NO_AUDIT = "[audit]\nenabled = false\n"


async def test_expired_people_are_swept_as_decisions_go_on(clock: ManualClock) -> None:
    store = MemoryStore()
    throttle = engine(HOURLY + NO_AUDIT, store, clock)
    for number in range(500):
        await throttle.decide(marker(), person=f"early-{number}")
    assert len(store) == 500
    clock.advance(24 * 3600)  # past every window: all of it has expired
    for number in range(1100):
        await throttle.decide(marker(), person=f"late-{number}")
    assert len(store) == 1100  # without sweeping, 1600


async def test_audiences_count_people_seen_within_their_window(clock: ManualClock) -> None:
    store = MemoryStore()
    throttle = engine(HOURLY + '[fallback]\naudience_window = "1h"\n', store, clock)
    for person in ("a", "b"):
        await throttle.decide(marker(segment="eu/de"), person=person)
    eu_de, eu = throttle._audiences_of("eu/de")
    (us,) = throttle._audiences_of("us")
    sizes = await store.segment_sizes((eu_de, eu, us), window_ms=3_600_000)
    assert sizes == {eu_de: 2, eu: 2, us: 0}
    clock.advance(3601)
    await throttle.decide(marker(segment="eu/de"), person="c")
    assert await store.segment_sizes((eu_de,), window_ms=3_600_000) == {eu_de: 1}
