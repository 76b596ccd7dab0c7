# The two set-up commands are `make demo` and `make test`; each builds .venv itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint unit tools bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,test,dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/iam-key-exporter demo --listen 127.0.0.1:9877

tools:
	bash .ci/install-tools

# Copies the alert rules and the dashboard into the Helm chart (Helm cannot read outside
# the chart); tests/test_helm.py fails when the copies differ from these sources.
CHART_FILES := deploy/helm/iam-key-exporter/files
.PHONY: chart
chart:
	mkdir -p $(CHART_FILES)
	cp deploy/prometheus/alerts.yaml $(CHART_FILES)/alerts.yaml
	cp deploy/grafana/iam-key-exporter.json $(CHART_FILES)/dashboard.json

lint: $(STAMP)
	$(BIN)/ruff check exporter tests bench
	$(BIN)/mypy

# Four workers on two cores: most tests wait on subprocesses and sockets (daemons, moto,
# Prometheus), not on the CPU.
PYTEST_ARGS ?= -n 4

unit: $(STAMP) tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint unit

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
