# slimkit: the README's two commands are `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-fast demo lint proto clean

# Main environment. torch is pinned to the CPU build lying on disk; torchvision/torchaudio are kept
# out (PyPI's builds fail to import beside it and transformers imports them when present).
$(VENV)/.installed: pyproject.toml constraints/main.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -c constraints/main.txt setuptools wheel
	$(PIP) -c constraints/main.txt --no-build-isolation -e '.[dev,triton]'
	-$(BIN)/python -m pip uninstall -q -y torchvision torchaudio 2>/dev/null
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else 'refusing: torch ' + v + ' is not the CPU build 2.13.0')"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q

# Skip the end-to-end checks marked slow (CI runs everything through `make test`).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/slimkit toy build
	$(BIN)/slimkit toy report

lint: setup
	$(BIN)/ruff check slimkit tests benchmarks

clean:
	rm -rf $(VENV) $(VENV)-* *.egg-info .pytest_cache
