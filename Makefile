# Two commands a newcomer needs: `make demo` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test bench lint typecheck check-redis dashboard-screenshot clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python -m examples.demo

test: $(INSTALLED) check-redis lint typecheck
	$(BIN)/python -m pytest --cov --cov-report=term

# Load test: bare app, throttle and its peers under uvicorn and wrk (CPU and Redis per request),
# then at a fixed rate (h2load, open loop), then the engine alone and memory per person.
# For figures worth reading: apt-get install wrk nghttp2-client (else Python clients stand in).
bench: $(INSTALLED) check-redis
	$(BIN)/throttle bench

lint: $(INSTALLED)
	$(BIN)/ruff check throttle tests examples
	$(BIN)/ruff format --check throttle tests examples

typecheck: $(INSTALLED)
	$(BIN)/mypy

# docs/dashboard.png, the README's picture of the ops dashboard: examples/dashboard.py's
# simulated day, in Debian's chromium (/usr/bin/chromium).
dashboard-screenshot: $(INSTALLED)
	$(BIN)/python -m examples.dashboard --screenshot docs/dashboard.png

# The tests start private redis-server processes on free loopback ports; they need the binary.
check-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "redis-server is not installed. The tests start their own private Redis servers,"; \
		echo "so they need the binary: Debian/Ubuntu: sudo apt-get install redis-server;"; \
		echo "macOS: brew install redis. Then run make test again."; \
		exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
