# Two entry points a fresh machine needs: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?=
CLIP ?= src/cvvae/assets/clip.mp4
IMAGE_VAE ?= src/cvvae/assets/image_vae

.PHONY: setup demo test test-all lint

$(BIN)/cvvae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,pipelines]'
	touch $@

setup: $(BIN)/cvvae

demo: setup
	mkdir -p out/demo
	$(BIN)/cvvae reconstruct $(CLIP) out/demo/reconstruction.mp4 $(if $(MODEL),--model $(MODEL))
	$(BIN)/cvvae evaluate --model cv-vae=$(or $(MODEL),src/cvvae/assets/model) \
		--image-vae $(IMAGE_VAE) --baselines --videos $(CLIP) --frames 33 --height 128 --width 168 \
		--out out/demo

test: setup
	$(BIN)/pytest

test-all: setup
	$(BIN)/pytest -m ''

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
