# The two commands of the README: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch goes in the same pip command as the project, so deepspeed cannot replace it. Without a GPU: the CPU
# wheel the suite is verified with. With one (nvidia-smi present): a CUDA build in the supported range (2.11 to
# 2.14; pyproject.toml says why 2.11): one already in the venv is kept, else pip's default Linux wheel (CUDA).
TORCH_CPU ?= torch==2.13.0
TORCH_CUDA ?= torch>=2.11,<2.15
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "$(TORCH_CUDA)" || echo "$(TORCH_CPU)")
# flash-attn (GPU only, optional) compiles against the installed torch, so pip must not build it in an
# isolated environment: it is not a pyproject extra for that reason (`pip install .[gpu]` failed).
FLASH_ATTN ?= flash-attn>=2.6
DEMO_DIR ?= runs/demo
# DeepSpeed's CPU communication op is compiled on first use; building it inside the venv keeps each checkout
# clear of another's build (a lock left in ~/.cache by a killed build once hung a CI run).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: venv venv-gpu demo test test-fast gpu-check clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

# The venv plus flash-attn, built against the venv's CUDA torch (needs nvcc; see README, "Launching").
venv-gpu: venv
	$(PY) -m pip install --quiet setuptools wheel packaging ninja psutil
	$(PY) -m pip install --no-build-isolation "$(FLASH_ATTN)"

demo: venv
	OMP_NUM_THREADS=1 $(PY) -m recipe.demo --out $(DEMO_DIR)

test: venv
	$(PY) -m pytest -x -q -rs --durations=15 tests

test-fast: venv
	$(PY) -m pytest -x -q -m "not slow" tests

# On a GPU machine: the one-command check of the GPU path (benchmarks/gpu_check.sh; results/gpu.md)
gpu-check:
	bash benchmarks/gpu_check.sh

clean-demo:
	rm -rf $(DEMO_DIR)
