"""`throttle bench`: throttle under load beside the bare app and its peers, the engine alone,
and Redis memory per person. `docs/performance.md` shows a run and how to read it.

- `apps`: the app each arm serves; `load`: the load generators (wrk, or a Python client);
- `decisions`: the engine alone; `memory`: bytes per person;
- `runner`: runs it all; `results`: what it found; `report`: the table and the JSON.
"""
