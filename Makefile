# valuecast: the front door. `make help` lists every target with its variables.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON_VERSION ?= 3.11
UV_VERSION := 0.13.8
VENV := .venv
BIN := $(VENV)/bin
UV := .tools/bin/uv
VALUECAST := $(BIN)/valuecast
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Python caches each module's bytecode the first time a command imports it, even where the machine
# sets PYTHONDONTWRITEBYTECODE (as these do; without a cache every command would spend seconds
# compiling pandas and friends again). Cheaper than compiling all 12,910 installed files at set-up
# (uv's --compile-bytecode: 30 s on 2 cores, where the demo's imports compile in ~12 s).
export PYTHONDONTWRITEBYTECODE :=
# Keep freed memory in the process for reuse instead of returning it to the kernel: the feature code
# allocates many short-lived arrays of ten million rows, and first-touch page faults on this kind of
# virtual machine cost 20x the work itself (docs/benchmarks.md). Override by setting them yourself.
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 68719476736
export MALLOC_TOP_PAD_ ?= 268435456

DATA ?= cdnow
AS_OF ?=
OUT ?=
HORIZON_DAYS ?= 90
CUTOFFS ?=
BENCH_CUSTOMERS ?= 1000000
MODEL ?= all
ENGINE ?= local
RULES ?=
HOST ?= 127.0.0.1
PORT ?= 3000
CONFIG ?=
TRIALS ?=
EXPERIMENT ?=
METRIC ?=
VERSION ?=
UI_PORT ?= 5000
JSON ?=
FORCE ?=
WEBHOOK ?=
PSI ?=
SCORE_PSI ?=
MAX_AGE_DAYS ?=
CUSTOMER ?=
# The webhook URL reaches the command through the environment, not its arguments: make prints each
# command and ps shows arguments, and the URL may hold a token.
export WEBHOOK

as_of_arg = $(if $(AS_OF),--as-of $(AS_OF),)
force_arg = $(if $(filter 1 yes true,$(FORCE)),--force,)

.PHONY: help
help: ## List the targets and their variables
	@echo "valuecast: customer and lead value from your own data"
	@echo
	@echo "Usage: make <target> [VARIABLE=value ...]"
	@echo
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | sort -t: -k1,1 \
		| awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: DATA=<bundled name|path.yaml> (default cdnow; bundled: cdnow online_retail x_education telco hillstrom)"
	@echo "           AS_OF=YYYY-MM-DD  OUT=<file>  HORIZON_DAYS=N (default 90)  CUTOFFS=N (latest N monthly cut-offs)"
	@echo "           BENCH_CUSTOMERS=N (default 1000000)  MODEL=<family>  CONFIG=<yaml>  TRIALS=N  EXPERIMENT=<name>"
	@echo "           METRIC=<name>  VERSION=<n>  ENGINE=local|spark  HOST/PORT (API)  UI_PORT (MLflow UI)  JSON=1 (models)"
	@echo "           FORCE=1 (score, refresh: replace an OUT that is not valuecast's output)"
	@echo "           WEBHOOK=<url> (refresh: deliver the changes; secret in VALUECAST_WEBHOOK_SECRET)  CUSTOMER=<id> (paths)"
	@echo "           PSI=0.25 SCORE_PSI=0.25 MAX_AGE_DAYS=180 (refresh: drift above these recommends a retrain)"
	@echo "Environment: VALUECAST_DATA_ROOT (default ../shared/data); the API: VALUECAST_DATASETS, VALUECAST_DEFAULT_DATASET"

$(UV):
	python$(PYTHON_VERSION) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --python python$(PYTHON_VERSION)
	touch $@

# PySpark (ENGINE=spark) is the 'spark' extra: its wheel is built from a 430 MB source archive at
# install, 23-28 s on 2 cores, so make setup (and make demo) leave it out. Re-made after every plain
# sync, which removes it.
$(VENV)/.spark: $(VENV)/.installed
	$(UV) sync --frozen --extra spark --python python$(PYTHON_VERSION)
	touch $@

.PHONY: setup
setup: $(VENV)/.installed ## Create .venv and install the locked dependencies (fast when nothing changed)

.PHONY: setup-spark
setup-spark: $(VENV)/.spark ## setup, and PySpark for ENGINE=spark (Java 17 too: java -version)

.PHONY: lock
lock: $(UV) ## Re-resolve uv.lock after changing dependencies in pyproject.toml
	$(UV) lock --python python$(PYTHON_VERSION)

.PHONY: demo
demo: setup ## Set up, then features and labels of every bundled dataset, train and register the models, a short sweep, batch-score CDNOW
	$(VALUECAST) demo

.PHONY: test
test: setup-spark ## Set up, then run the whole test suite
	$(BIN)/pytest

.PHONY: browser
browser: ## Install a headless browser (Debian's chromium, with apt) for the report test, unless chromium is on the PATH
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
		|| { echo "error: chromium is not on the PATH and apt-get is absent: install Chromium yourself"; exit 2; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	@chromium --version

.PHONY: lint
lint: setup-spark ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: format
format: setup ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: features
features: setup ## Features as of AS_OF (data before it) for DATA, written to OUT (.parquet/.csv)
	@test -n "$(OUT)" || { echo "error: set OUT=<file.parquet>, e.g. make features DATA=cdnow AS_OF=1997-10-01 OUT=out/features.parquet"; exit 2; }
	$(VALUECAST) features --data $(DATA) $(as_of_arg) --out $(OUT)

.PHONY: labels
labels: setup ## Outcomes in the HORIZON_DAYS after AS_OF for DATA, written to OUT
	@test -n "$(OUT)" -a -n "$(AS_OF)" || { echo "error: set AS_OF=YYYY-MM-DD and OUT=<file.parquet>, e.g. make labels DATA=cdnow AS_OF=1997-10-01 HORIZON_DAYS=90 OUT=out/labels.parquet"; exit 2; }
	$(VALUECAST) labels --data $(DATA) --as-of $(AS_OF) --horizon-days $(HORIZON_DAYS) --out $(OUT)

.PHONY: training-set
training-set: setup ## Features + labels at monthly cut-offs, stacked with a 'cutoff' column, to OUT
	@test -n "$(OUT)" || { echo "error: set OUT=<file.parquet>"; exit 2; }
	$(VALUECAST) training-set --data $(DATA) --horizon-days $(HORIZON_DAYS) $(if $(CUTOFFS),--cutoffs $(CUTOFFS),) --out $(OUT)

.PHONY: train
train: setup ## Train MODEL (churn|propensity|lead_score|clv|uplift|all, default all) on DATA, log to MLflow, promote if better
	$(VALUECAST) train --data $(DATA) --model $(MODEL) $(if $(CONFIG),--config $(CONFIG),)

.PHONY: score
score: setup $(if $(filter spark,$(ENGINE)),setup-spark) ## Score every customer of DATA with DATA's champions into OUT/ (scores, segments, report, CRM lists; with an uplift champion the next best action and actions/<arm>.csv); FORCE=1 replaces an OUT valuecast did not write
	@test -n "$(OUT)" || { echo "error: set OUT=<folder>, e.g. make score DATA=cdnow OUT=out/scores"; exit 2; }
	$(VALUECAST) score --data $(DATA) --out $(OUT) $(as_of_arg) --engine $(ENGINE) $(force_arg)

.PHONY: refresh
refresh: setup ## Score DATA as of AS_OF and compare with its previous refresh in OUT (default out/refresh/<dataset>): transitions, CRM change files, history; WEBHOOK=<url> delivers the changes
	$(if $(WEBHOOK),VALUECAST_WEBHOOK_URL="$$WEBHOOK",) $(VALUECAST) refresh --data $(DATA) $(as_of_arg) $(if $(OUT),--out $(OUT),) $(force_arg) \
		$(if $(PSI),--psi-threshold $(PSI),) $(if $(SCORE_PSI),--score-psi-threshold $(SCORE_PSI),) \
		$(if $(MAX_AGE_DAYS),--max-age-days $(MAX_AGE_DAYS),)

.PHONY: retrain
retrain: setup ## Retrain the families the latest refresh of DATA flagged for drift or age (ALL=1: every customer family); promoted only through the gate
	$(VALUECAST) retrain --data $(DATA) $(if $(OUT),--out $(OUT),) $(if $(ALL),--all,)

.PHONY: paths
paths: setup ## Each CUSTOMER's segment at every refresh of DATA (CUSTOMER=id or "id1 id2"), from OUT's history
	@test -n "$(CUSTOMER)" || { echo "error: set CUSTOMER=<id>, e.g. make paths DATA=cdnow CUSTOMER=00001"; exit 2; }
	$(VALUECAST) paths --data $(DATA) $(if $(OUT),--out $(OUT),) $(foreach c,$(CUSTOMER),--customer $(c))

.PHONY: segments
segments: setup ## Score DATA with its champions and freeze its tier cut-offs (segments/<dataset>/*.json) for API and batch
	$(VALUECAST) segments --data $(DATA) $(as_of_arg) $(if $(RULES),--rules $(RULES),)

SEED ?=
SIZE ?=
SCORES ?=

.PHONY: lookalike
lookalike: setup ## Customers outside SEED=<ids.csv|segment|tier:A> most like it: top SIZE=N (default the seed's size) into OUT/; a segment SEED needs SCORES=<make score OUT>
	@test -n "$(OUT)" -a -n "$(SEED)" || { echo "error: set SEED=<ids.csv | segment name> and OUT=<folder>, e.g. make lookalike DATA=cdnow SEED=best.csv OUT=out/lookalike"; exit 2; }
	$(VALUECAST) lookalike --data $(DATA) --seed "$(SEED)" --out $(OUT) $(if $(SIZE),--size $(SIZE),) $(if $(SCORES),--scores $(SCORES),) $(as_of_arg) $(force_arg)

.PHONY: serve
serve: setup ## Start the scoring API (BentoML) on HOST:PORT (default 127.0.0.1:3000) with every dataset's champions
	$(VALUECAST) prepare-store
	OMP_NUM_THREADS=1 $(BIN)/bentoml serve serving.service:ValueService --host $(HOST) --port $(PORT)

.PHONY: reload
reload: ## Tell the running API to switch to the current champions (POST /reload)
	curl -fsS -X POST $(if $(VALUECAST_API_KEY),-H "X-API-Key: $(VALUECAST_API_KEY)",) http://$(HOST):$(PORT)/reload; echo

.PHONY: bento
bento: setup ## Build the scoring API as a Bento (bentoml build, bentofile.yaml)
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/bentoml build

.PHONY: experiment
experiment: setup ## Hyperparameter search CONFIG=experiments/<file>.yaml [TRIALS=N]: nested MLflow runs, best -> challenger
	@test -n "$(CONFIG)" || { echo "error: set CONFIG=experiments/<file>.yaml, e.g. make experiment CONFIG=experiments/churn_cdnow.yaml TRIALS=5"; ls experiments/*.yaml; exit 2; }
	$(VALUECAST) experiment --config $(CONFIG) $(if $(TRIALS),--trials $(TRIALS),)

.PHONY: compare
compare: setup ## Runs of EXPERIMENT (e.g. valuecast-churn, sweep-churn-cdnow) sorted by [METRIC=]; writes a figure
	@test -n "$(EXPERIMENT)" || { echo "error: set EXPERIMENT=<name>, e.g. make compare EXPERIMENT=valuecast-churn"; exit 2; }
	$(VALUECAST) compare --experiment "$(EXPERIMENT)" $(if $(METRIC),--metric $(METRIC),) $(if $(OUT),--out $(OUT),)

.PHONY: promote
promote: setup ## Make VERSION the champion of MODEL (churn|propensity|lead_score|clv) for DATA; recorded as tags
	@test -n "$(VERSION)" -a "$(MODEL)" != "all" || { echo "error: set MODEL=<family>, DATA=<dataset> and VERSION=<n>, e.g. make promote MODEL=churn DATA=cdnow VERSION=3"; exit 2; }
	$(VALUECAST) promote --model $(MODEL) --data $(DATA) --version $(VERSION)

.PHONY: rollback
rollback: setup ## Move the champion of MODEL for DATA back to the previous champion; recorded as tags
	@test "$(MODEL)" != "all" || { echo "error: set MODEL=<family> and DATA=<dataset>, e.g. make rollback MODEL=churn DATA=cdnow"; exit 2; }
	$(VALUECAST) rollback --model $(MODEL) --data $(DATA)

.PHONY: models
models: setup ## Every registered model (valuecast-<family>-<dataset>): champion, candidate, test metric vs best baseline [JSON=1]
	$(VALUECAST) models $(if $(JSON),--json,)

.PHONY: ui
ui: setup ## MLflow UI on 127.0.0.1:UI_PORT (default 5000, one worker) against the same store
	$(VALUECAST) ui --host $(HOST) --port $(UI_PORT) --workers 1

.PHONY: model-quality
model-quality: setup ## Train every family on the bundled datasets; regenerate docs/model-quality.md
	$(VALUECAST) model-quality

.PHONY: bench
bench: bench-features bench-clv bench-train bench-serve bench-score bench-refresh ## Run every benchmark and print its figures

.PHONY: bench-features
bench-features: setup ## Features for 10M synthetic transactions of 1M customers from Parquet: time, memory, vs lifetimes
	$(BIN)/python -m benchmarks.bench_features --customers $(BENCH_CUSTOMERS)

.PHONY: bench-clv
bench-clv: setup ## BG/NBD + Gamma-Gamma fit on 1M synthetic customers: time and recovered parameters
	$(BIN)/python -m benchmarks.bench_clv --customers $(BENCH_CUSTOMERS)

.PHONY: bench-train
bench-train: setup ## make train MODEL=all DATA=cdnow against a temporary MLflow store: wall time and memory
	$(BIN)/python -m benchmarks.bench_train --data cdnow

.PHONY: bench-serve
bench-serve: setup ## Load test of the API (16 clients) side by side with mlflow models serve; a 1,000-customer request; 30 s with reloads every 2 s
	$(BIN)/python -m benchmarks.bench_serve --clients 16 --duration 10 --rounds 3

.PHONY: bench-score
bench-score: setup-spark ## make score on 1M synthetic customers / 10M transactions: local engine, then Spark
	$(BIN)/python -m benchmarks.bench_score --customers $(BENCH_CUSTOMERS)

.PHONY: bench-refresh
bench-refresh: setup ## make refresh of the bench-score data at two dates against one make score of it (target: within 1.5x)
	$(BIN)/python -m benchmarks.bench_refresh --customers $(BENCH_CUSTOMERS)

.PHONY: bench-uplift
bench-uplift: setup ## Uplift on Hillstrom, the issue's protocol (70/30 by arm and outcome, seeds 0-4): Qini, uplift@30%, policy
	$(BIN)/python -m benchmarks.bench_uplift --data hillstrom

.PHONY: bench-lookalike
bench-lookalike: setup ## Look-alikes on CDNOW and Online Retail (tier-A seeds): recall@N of a hidden 20% and lift, classifier vs nearest neighbours
	$(BIN)/python -m benchmarks.bench_lookalike --data cdnow online_retail

.PHONY: clean
clean: ## Remove outputs and caches (keeps .venv and the MLflow store)
	rm -rf out .pytest_cache .mypy_cache .ruff_cache bench-data
