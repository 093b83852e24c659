# Set-up and entry points. `make pipeline` and `make test` create .venv first if needed.
VENV := .venv
# DVC runs each stage's `python` from PATH: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: pipeline test setup
pipeline: setup
	dvc repro

test: setup
	python -m pytest

setup: $(VENV)/installed

# Rebuilt only when the pins change, so a second run costs nothing.
$(VENV)/installed: requirements.txt requirements-lock.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r requirements.txt -c requirements-lock.txt
	touch $@
