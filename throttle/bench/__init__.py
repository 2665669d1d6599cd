"""`throttle bench`: throttle under load beside the bare app and its peers, the engine alone,
and Redis memory per person. `docs/performance.md` shows a run and how to read it.

- `apps`: the app each arm serves; `load`: the load generators (wrk, or a Python client);
- `openloop`: load at a fixed rate (h2load, or a paced Python client);
- `cost`: what a run cost the server (/proc) and Redis (INFO);
- `decisions`: the engine alone; `memory`: bytes per person;
- `runner`: runs it all; `results`: what it found; `report`: the table and the JSON.
"""
