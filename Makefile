# The two commands of the README: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On a machine without a GPU, take the CPU wheel of torch (pinned in the same pip command so that
# deepspeed cannot replace it). With a GPU, the CUDA torch already in the venv (or pip's default) is kept.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "torch==2.13.0")
DEMO_DIR ?= runs/demo

.PHONY: venv demo test test-fast clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet $(TORCH_SPEC) -e ".[dev]"
	touch $@

demo: venv
	OMP_NUM_THREADS=1 $(PY) -m recipe.demo --out $(DEMO_DIR)

test: venv
	$(PY) -m pytest -x -q -rs --durations=15 tests

test-fast: venv
	$(PY) -m pytest -x -q -m "not slow" tests

clean-demo:
	rm -rf $(DEMO_DIR)
