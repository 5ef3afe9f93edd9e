# Two entry points a fresh machine needs: `make demo` (set up + main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?=
CLIP ?= src/cvvae/assets/clip.mp4
IMAGE_VAE ?= src/cvvae/assets/image_vae

.PHONY: setup demo test test-all lint

# `pip install torch==2.13.0` gets the CPU build only where pip finds that wheel on disk first
# (pip's find-links, as on the machines this project is developed on); from PyPI on Linux it is a
# CUDA build. To pick the build, make .venv and install torch into it before `make`:
#   python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# (or the index URL that pytorch.org gives for your CUDA version); the line below then keeps it.
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
