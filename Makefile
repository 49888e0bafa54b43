# GridSentry: two commands do everything.
#   make demo  - create .venv, install, run the demo (broker, simulated fleet, service, API)
#   make test  - install what the tests need (mosquitto & co. via apt when root), then lint, type-check, test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test install lint typecheck security pytest system-deps clean bench dashboards dashboards-check metrics-doc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gridsentry demo $(DEMO_ARGS)

# Debian packages the integration tests start for real (loopback only). Installed only as root.
SYSTEM_PACKAGES := mosquitto mosquitto-clients docker-compose prometheus prometheus-alertmanager openssl socat chromium fonts-wqy-microhei postgresql
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	      || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy collector storage rules alerts gridsentry simulator dashboards reports

# bandit (waivers with reasons in pyproject's [tool.bandit]) and pip-audit (waivers in .ci/audit-waivers.txt).
security: $(STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r collector storage rules alerts gridsentry simulator reports
	$(BIN)/python .ci/audit_deps.py

pytest: $(STAMP)
	$(BIN)/pytest --durations=20

test: system-deps lint typecheck security pytest

bench: $(STAMP) system-deps
	$(BIN)/python bench/ingest.py

# Grafana dashboards as code (dashboards/generate.py) -> dashboards/json/, and the metric catalogue docs/metrics.md.
dashboards: $(STAMP)
	$(BIN)/python -m dashboards.generate

dashboards-check: $(STAMP)
	$(BIN)/python -m dashboards.generate --check

metrics-doc: $(STAMP)
	$(BIN)/gridsentry screens metrics-doc > docs/metrics.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
