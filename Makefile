# Two entry points a fresh machine needs: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?=
CLIP ?= src/cvvae/assets/clip.mp4

.PHONY: setup demo test test-all lint

$(BIN)/cvvae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,pipelines]'
	touch $@

setup: $(BIN)/cvvae

demo: setup
	mkdir -p out
	$(BIN)/cvvae reconstruct $(CLIP) out/clip_reconstruction.mp4 --height 72 --width 128 $(if $(MODEL),--model $(MODEL))

test: setup
	$(BIN)/pytest

test-all: setup
	$(BIN)/pytest -m ''

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
