"""throttle: ASGI middleware that stops over-personalization.

```python
from throttle import ThrottleMiddleware, personalization

app.add_middleware(ThrottleMiddleware, policy="policies/default.toml", store="memory://")

async def offer(request):
    return JSONResponse(body, headers=personalization("spring-sale", segment="eu/de"))
```
"""

from throttle.decision import Decision, Reason
from throttle.engine import Engine
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
    ThrottleMiddleware,
    authenticated_user,
)
from throttle.observe import Observation
from throttle.policy import Policy, load_policy
from throttle.privacy import privacy_routes
from throttle.scoring import Factor
from throttle.store import ClusterStore, MemoryStore, RedisStore, Store, open_store

__all__ = [
    "DECISION_HEADER",
    "DECISION_SCOPE_KEY",
    "ClusterStore",
    "ConfigurationError",
    "Decision",
    "Engine",
    "Factor",
    "FallbackProvider",
    "FallbackRequest",
    "Marker",
    "MarkerError",
    "MemoryStore",
    "Observation",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "Reason",
    "RedisStore",
    "SegmentContent",
    "Store",
    "StoreUnavailable",
    "ThrottleError",
    "ThrottleMiddleware",
    "authenticated_user",
    "load_policy",
    "open_store",
    "parse_marker",
    "personalization",
    "privacy_routes",
]
