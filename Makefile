# The two commands of the README. Both set up .venv from scratch when needed (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama.cpp's native build crashed on this class of CPU; a portable build runs (DESIGN.md).
# The multimodal library (llava/mtmd) is not used and only costs build time.
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DLLAVA_BUILD=OFF
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-installs when pyproject.toml changes. torch first and pinned: the CPU wheel, not CUDA.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/germinate run

# pytest exits 5 when it collects no tests; that is not a failure.
test: install
	$(BIN)/python -m pytest || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) data/runs
