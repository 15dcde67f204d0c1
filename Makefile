# Two commands for a newcomer: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv on first use. torch/torchvision are pinned (see pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install lint clean

$(BIN)/ray-mm: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e ".[dev]"
	touch $(BIN)/ray-mm

install: $(BIN)/ray-mm

run: install
	$(BIN)/ray-mm run --out out/results.jsonl

# pytest exits 5 when it collects nothing; that must fail, so it is not masked here.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check ray_mm actors tests benchmarks

clean:
	rm -rf $(VENV) out
