"""The GPU check cannot rot: its dry run (CPU, toy sizes, bf16 on DeepSpeed's CPU accelerator) runs every stage
but the torch-lower-bound one (that test is in this suite already); the wheels it carries cover the project's
runtime requirements; the Makefile installs a supported CUDA torch on GPU machines.

Broken variants tried: the chain's resume made to start afresh (--out changed between the two runs: the
"resumed at step 6" assertion fails the chain stage, so this test fails); a requirement removed from
gpu_check_requirements.txt (test_the_carried_wheels_cover_the_runtime_requirements fails); the Makefile's GPU
branch back to no torch spec (test_make_installs_a_supported_torch fails).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
RUNTIME_NOT_CARRIED = {"torch", "numpy", "av", "datasets", "tensorboard", "matplotlib", "pillow"}  # on the machine / unused


@pytest.mark.slow
def test_the_dry_run_passes_every_stage(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(tmp_path)], cwd=REPO,
                          env={**env, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900)
    results = json.loads((tmp_path / "gpu_check.json").read_text()) if (tmp_path / "gpu_check.json").exists() else {}
    failed = {name: record.get("error") for name, record in results.items() if not record["ok"]}
    assert done.returncode == 0 and not failed, f"{failed}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert set(results) == {"environment", "attention", "training_steps", "loader", "chain"}
    assert results["attention"]["result"]["kernels"]["decoder"] == "sdpa"
    for row in results["training_steps"]["result"].values():
        assert all(map(lambda loss: loss == loss, row["losses_first_last"])) and row["tflop_per_step"] >= 0
    assert results["chain"]["result"]["translation"] is not None
    report = (tmp_path / "gpu.md").read_text()
    assert "DRY RUN" in report and "FAILED" not in report


def test_the_carried_wheels_cover_the_runtime_requirements():
    """Every runtime requirement of pyproject.toml (but torch and what the check does not import) is pinned for
    the GPU machine, inside the range pyproject allows."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (REPO / "benchmarks" / "gpu_check_requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (version,) = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            pins[re.sub(r"[-_.]+", "-", requirement.name).lower()] = version
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in RUNTIME_NOT_CARRIED:
            continue
        assert name in pins, f"{name} is a runtime requirement but not carried to the GPU machine"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"
    assert "torch" not in pins  # the machine's CUDA build is used


def test_the_script_refuses_unknown_arguments_and_explains_itself():
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown argument --frobnicate" in done.stderr
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "--fetch-wheels" in done.stdout and "--dry-run" in done.stdout


def test_without_cuda_the_real_check_says_so():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", "/nonexistent/never-written"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA device" in done.stderr


@pytest.mark.parametrize("gpu, expected", [(False, "torch==2.13.0"), (True, "torch>=2.11,<2.15")])
def test_make_installs_a_supported_torch(tmp_path, gpu, expected):
    """CPU machines get the verified CPU wheel; GPU machines (nvidia-smi on PATH) a CUDA torch in the supported
    range, in the same pip command as the project so deepspeed cannot replace it. flash-attn is built without
    build isolation (against that torch)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    path = os.environ["PATH"] if gpu else "/usr/bin:/bin"
    done = subprocess.run(["make", "-n", "-B", "venv-gpu" if gpu else "venv", "VENV=/nonexistent-venv"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PATH": f"{bin_dir}:{path}"})
    assert done.returncode == 0, done.stderr
    install = next(line for line in done.stdout.splitlines() if "-e \".[dev]\"" in line)
    assert f'"{expected}"' in install
    if gpu:
        assert "--no-build-isolation" in done.stdout and "flash-attn" in done.stdout
    project = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.11,' in project and "gpu = [" not in project
