# hm_recs: `make demo` runs the pipeline on a generated sample, `make test` runs the test suite.
# Both create the virtual environment with pip on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HM_STATE_DIR ?= $(CURDIR)/state
export DAGSTER_HOME ?= $(HM_STATE_DIR)/dagster

.PHONY: demo test ui mlflow-ui serve bench lint clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# copied once: an instance config edited in $(DAGSTER_HOME) is kept
$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/hm-recs demo

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: $(STAMP)
	mkdir -p state/mlflow
	$(BIN)/mlflow ui --backend-store-uri $${HM_MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/state/mlflow/mlflow.db} -h 127.0.0.1 -p 5000

# the champion recommender over REST on 127.0.0.1:5001 (POST /invocations)
serve: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_TRACKING_URI=$${HM_MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/state/mlflow/mlflow.db} \
	  $(BIN)/mlflow models serve -m models:/hm_recs_recommender@champion --env-manager local -h 127.0.0.1 -p 5001

# the declared line length (pyproject) included: `make test` lints first, so CI does too
lint: $(STAMP)
	$(BIN)/ruff check hm_recs hm_recs_tests benchmarks infra
	$(BIN)/ruff format --check hm_recs hm_recs_tests benchmarks infra

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sessionize.py

clean:
	rm -rf state
