"""throttle: ASGI middleware that stops over-personalization.

```python
from throttle import ThrottleMiddleware, personalization

app.add_middleware(ThrottleMiddleware, policy="policies/default.toml", store="memory://")

async def offer(request):
    return JSONResponse(body, headers=personalization("spring-sale", segment="eu/de"))
```
"""

from throttle.client import MarkerFields, Reservation, ThrottleClient
from throttle.dashboard import dashboard_routes
from throttle.decision import Decision, Reason
from throttle.engine import Engine
from throttle.envelope import ThrottledWebSocket, personalized_event
from throttle.errors import (
    ConfigurationError,
    MarkerError,
    PolicyError,
    PolicyProblem,
    StoreUnavailable,
    ThrottleError,
)
from throttle.fallback import FallbackProvider, FallbackRequest, SegmentContent
from throttle.message import Marker, parse_marker, personalization
from throttle.middleware import (
    DECISION_HEADER,
    DECISION_SCOPE_KEY,
    MARKET_SCOPE_KEY,
    ThrottleMiddleware,
    authenticated_user,
)
from throttle.observe import Observation
from throttle.opsstate import OpsConfig, OpsState
from throttle.policy import Policy, load_policy
from throttle.privacy import privacy_routes
from throttle.scoring import Factor
from throttle.store import ClusterStore, MemoryStore, RedisStore, Store, open_store
from throttle.support import DataRequest, admin_routes

__all__ = [
    "DECISION_HEADER",
    "DECISION_SCOPE_KEY",
    "MARKET_SCOPE_KEY",
    "ClusterStore",
    "ConfigurationError",
    "DataRequest",
    "Decision",
    "Engine",
    "Factor",
    "FallbackProvider",
    "FallbackRequest",
    "Marker",
    "MarkerError",
    "MarkerFields",
    "MemoryStore",
    "Observation",
    "OpsConfig",
    "OpsState",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "Reason",
    "RedisStore",
    "Reservation",
    "SegmentContent",
    "Store",
    "StoreUnavailable",
    "ThrottleClient",
    "ThrottleError",
    "ThrottleMiddleware",
    "ThrottledWebSocket",
    "admin_routes",
    "authenticated_user",
    "dashboard_routes",
    "load_policy",
    "open_store",
    "parse_marker",
    "personalization",
    "personalized_event",
    "privacy_routes",
]
