# Set-up and entry points. `make pipeline` and `make test` create .venv first if needed.
VENV := .venv
# DVC runs each stage's `python` from PATH: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: pipeline search test test-fast screenshots setup ui plots system-packages
# validate first, outside DVC too: where DVC itself would refuse params.yaml (a variant named `../x`
# makes output paths overlap), the mistake is said in the pipeline's words.
pipeline: setup
	python -m pipeline.validate
	dvc repro

# Only when asked, never by `dvc repro` (docs/search.md): the Optuna study of search.* on the train
# and validation splits, then its best search.promote designs written into params.yaml as variants,
# which the next `make pipeline` trains with train.seeds and compares with the rest. Started again,
# here or on another host sharing its storage, it joins the same study.
search: setup
	python -m pipeline.validate
	dvc repro preprocess
	python -m pipeline.search
	python -m pipeline.promote

test: setup system-packages
	python -m pytest

# The edit-test loop: tests/unit and tests/project, in-process (no DVC runs, no servers), minutes.
test-fast: setup
	python -m pytest -m "not slow"

# The README's screenshots, taken again by the browser tests on a quick run of the pipeline.
screenshots: setup system-packages
	SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots python -m pytest tests/scenarios/test_ui.py

# PostgreSQL, Chromium and nginx, which the tests drive for real: installed if missing and possible.
system-packages:
	tests/system-packages.sh

# The MLflow UI on this repository's store, lean on a small machine: one worker, no GenAI job
# runner (benchmarks/ui.py measures it). evaluate prints the links to open.
# The UI on UI_PORT (the links evaluate prints say 5000; the serving examples use 5001). MLflow
# exits 0 when the port is taken: say so first, in one line.
UI_PORT ?= 5000
ui: setup
	@python -c "import socket, sys; taken = socket.socket().connect_ex(('127.0.0.1', $(UI_PORT))) == 0; \
	sys.exit('make ui: port $(UI_PORT) is taken (a scoring server?): stop it, or choose another port: make ui UI_PORT=5002' if taken else 0)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1 --host 127.0.0.1 --port $(UI_PORT)

# dvc_plots/index.html: the variants overlaid per metric and every figure; draws offline. The
# page with Vega inlined is committed; a deleted one is written again.
plots: setup .dvc/plots/offline.html
	dvc plots show

.dvc/plots/offline.html:
	$(VENV)/bin/python -m pipeline.plots_page

setup: $(VENV)/installed

# Rebuilt only when the pins change, so a second run costs nothing.
$(VENV)/installed: requirements.txt requirements-lock.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r requirements.txt -c requirements-lock.txt
	touch $@
