# Set-up and entry points. `make pipeline` and `make test` create .venv first if needed.
VENV := .venv
# DVC runs each stage's `python` from PATH: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: pipeline test setup ui plots
pipeline: setup
	dvc repro

test: setup
	python -m pytest

# The MLflow UI on this repository's store, lean on a small machine: one worker, no GenAI job
# runner (benchmarks/ui.py measures it). evaluate prints the links to open.
ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1 --host 127.0.0.1 --port 5000

# dvc_plots/index.html: the variants overlaid per metric and every figure; draws offline.
plots: setup
	dvc plots show

setup: $(VENV)/installed

# Rebuilt only when the pins change, so a second run costs nothing.
$(VENV)/installed: requirements.txt requirements-lock.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r requirements.txt -c requirements-lock.txt
	$(VENV)/bin/python -m pipeline.plots_page
	touch $@
