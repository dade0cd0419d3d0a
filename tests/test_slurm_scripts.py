"""Static checks of the SLURM scripts (slurm/**/*.sh); no cluster needed (tests/test_slurm_cluster.py runs them).

- every script is valid bash (`bash -n`);
- the #SBATCH header parses as sbatch reads it: all directives before the first command (sbatch
  ignores any later one), known options, well-formed values; the training scripts are preemption-safe
  and log into slurm/logs/, a folder that exists in every checkout;
- the commands the scripts build (DRY_RUN=1 prints them) are accepted by their parsers: torchrun's
  for the launcher flags and the recipe entry points' `build_parser()` for the training flags, and each
  knob the scripts document (CURRICULUM, REFERENCE_RUN, NUM_BEAMS, ...) arrives as the config field it
  names, for the knob combinations the scripts document.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "slurm").rglob("*.sh"))
SBATCH_SCRIPTS = sorted(p for p in (REPO / "slurm").glob("*.sh") if re.search(r"^#SBATCH", p.read_text(), re.M))
TRAINING_SCRIPTS = ["pretrain.sh", "finetune.sh"]

# sbatch long options the scripts may use, with a check of the value's syntax
SBATCH_OPTIONS = {
    "job-name": r"[\w.-]+",
    "nodes": r"\d+(-\d+)?",
    "ntasks": r"\d+",
    "ntasks-per-node": r"\d+",
    "cpus-per-task": r"\d+",
    "gpus-per-node": r"([\w-]+:)?\d+",
    "time": r"(\d+-)?\d{1,2}(:\d{2}){0,2}|\d+",
    "output": r"\S+",
    "error": r"\S+",
    "open-mode": r"append|truncate",
    "requeue": None,
    "signal": r"(B:|R:)?(USR1|USR2|TERM|INT)@\d+",
    "partition": r"[\w,-]+",
    "account": r"[\w-]+",
    "array": r"\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?",
    "kill-on-invalid-dep": r"yes|no",
    "exclusive": None,
    "mem": r"\d+[KMGT]?",
}


def test_scripts_exist():
    names = {p.relative_to(REPO / "slurm").as_posix() for p in SCRIPTS}
    assert {"pretrain.sh", "finetune.sh", "shard.sh", "shard_finalize.sh", "export.sh", "pipeline.sh",
            "lib/launch.sh", "lib/shard_args.sh", "local/start.sh", "local/stop.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def sbatch_directives(script: Path) -> dict[str, str | None]:
    """The #SBATCH options as sbatch reads them: only those before the first command count."""
    options: dict[str, str | None] = {}
    for number, line in enumerate(script.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if not stripped.startswith("#SBATCH"):
            continue
        for token in shlex.split(stripped[len("#SBATCH"):], comments=False):
            match = re.fullmatch(r"--([\w-]+)(?:=(.*))?", token)
            assert match, f"{script.name}:{number}: '{token}' is not a long option (--name=value)"
            name, value = match.groups()
            assert name in SBATCH_OPTIONS, f"{script.name}:{number}: unknown or unexpected sbatch option --{name}"
            pattern = SBATCH_OPTIONS[name]
            if pattern is None:
                assert value is None, f"{script.name}:{number}: --{name} takes no value"
            else:
                assert value is not None and re.fullmatch(pattern, value), f"{script.name}:{number}: bad --{name}={value}"
            options[name] = value
    return options


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=lambda p: p.name)
def test_sbatch_header(script):
    text = script.read_text()
    first_command = next(i for i, line in enumerate(text.splitlines())
                         if line.strip() and not line.strip().startswith("#"))
    assert all(i < first_command for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH")), \
        f"{script.name}: an #SBATCH line after the first command is silently ignored by sbatch"
    options = sbatch_directives(script)
    assert "job-name" in options and "time" in options
    # sbatch opens the log before the script runs: its folder must exist in every checkout
    log_dir = (REPO / options["output"]).parent
    assert options["output"].startswith("slurm/logs/") and (log_dir / ".gitignore").is_file()
    assert options.get("open-mode") == "append"          # a requeued job appends to the same log


@pytest.mark.parametrize("name", [*TRAINING_SCRIPTS, "shard.sh"])
def test_long_jobs_are_preemption_safe(name):
    options = sbatch_directives(REPO / "slurm" / name)
    assert "requeue" in options
    signal = re.fullmatch(r"B:USR1@(\d+)", options["signal"])
    assert signal and int(signal.group(1)) >= 60        # to the batch shell, time left to checkpoint


# ------------------------------------------------------------------------- the commands they build

def dry_run(script: str, env: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Run `script` with DRY_RUN=1; return (srun launch command or [], [program argv, ...])."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for knob in ("DATA", "OUT", "PRESET", "DS_CONFIG", "NEGATIVES", "CURRICULUM", "REFERENCE_RUN", "EPOCHS",
                 "MAX_STEPS", "EXTRA_ARGS", "GPUS_PER_NODE", "CPU", "INIT", "NUM_BEAMS", "RUN", "PYTHON",
                 "PHOENIX", "CSL_DAILY", "MANIFEST", "VIDEO_FORMAT", "NUM_TASKS"):
        clean.pop(knob, None)
    result = subprocess.run(["bash", f"slurm/{script}"], env={**clean, **env, "DRY_RUN": "1"}, cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    launch, programs = [], []
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(":")
        if kind == "LAUNCH":
            launch = shlex.split(rest)
        elif kind == "PROGRAM_ARGV":
            programs.append(shlex.split(rest))
    assert programs, result.stdout
    return launch, programs


def parse_with_entry_point(module: str, argv: list[str]) -> argparse.Namespace:
    """Parse `argv` with the entry point's own `build_parser()`; argparse exits (SystemExit) on an unknown flag.
    A missing module or parser is a failure, not a skip: every script's entry point ships with the project."""
    return importlib.import_module(module).build_parser().parse_args(argv)


def check_program_flags(program: list[str]):
    """The program's config as the entry point builds it from the flags the script passed (`recipe.config`'s
    dataclasses, validated), after checking that the entry point's own parser accepts them too."""
    assert program[0] == "-m", program
    module, argv = program[1], program[2:]
    from recipe import config
    config_class = {"recipe.pretrain": config.PretrainConfig, "recipe.finetune": config.FinetuneConfig}[module]
    parse_with_entry_point(module, argv)
    return config.parse_config(config_class, argv)     # the dataclasses' flags, and a consistent combination


def assert_config(config, expected: dict) -> None:
    """Each knob's value reached the run's config (field by field, so a failure names the field)."""
    for field, value in expected.items():
        assert getattr(config, field) == value, f"{field}: {getattr(config, field)!r} != {value!r}"


@pytest.fixture
def dirs(tmp_path):
    for name in ("data", "reference", "pretrain-run", "finetune-run"):
        (tmp_path / name).mkdir()
    return tmp_path


# knobs -> the config fields they must set. Broken variant tried: pretrain.sh passing `--curriculum log`
# whatever CURRICULUM says (and finetune.sh dropping NUM_BEAMS): the "pair-selection" ("from-pretraining")
# case fails on that field, while the old flags-parse-only check passed.
PRETRAIN_CASES = {
    "defaults": ({}, dict(preset="large", negatives="random", reference_run="", deepspeed_config="ds_configs/zero2.json",
                          epochs=10, max_steps=0, record_trajectory_every=0)),
    "reference-run": ({"NEGATIVES": "random", "RECORD_TRAJECTORY_EVERY": "5", "EPOCHS": "40"},
                      dict(negatives="random", record_trajectory_every=5, epochs=40, reference_run="")),
    "pair-selection": ({"REFERENCE_RUN": "{reference}", "CURRICULUM": "sqrt", "MAX_STEPS": "100",
                        "EXTRA_ARGS": "--ps-score slope --micro-batch-size 16 --similarity cls"},
                       dict(negatives="ps", reference_run="{reference}", curriculum="sqrt", max_steps=100,
                            ps_score="slope", micro_batch_size=16, similarity="cls")),
    "pair-selection-default-curriculum": ({"REFERENCE_RUN": "{reference}"},
                                          dict(negatives="ps", reference_run="{reference}", curriculum="log")),
    "self-reference": ({"REFERENCE_RUN": "self", "RECORD_TRAJECTORY_EVERY": "5", "SELF_REFERENCE_CHECKPOINTS": "4",
                        "EPOCHS": "40"},
                       dict(negatives="ps", reference_run="self", record_trajectory_every=5,
                            self_reference_checkpoints=4, epochs=40)),
    "cpu": ({"CPU": "1", "PRESET": "tiny", "MAX_STEPS": "8", "DS_CONFIG": "ds_configs/zero3.json",
             "EXTRA_ARGS": "--num-workers 0 --save-every 4"},
            dict(preset="tiny", max_steps=8, num_workers=0, save_every=4, deepspeed_config="ds_configs/zero3.json")),
}


@pytest.mark.parametrize("case", PRETRAIN_CASES)
def test_pretrain_knobs_reach_the_config(case, dirs):
    knobs, expected = PRETRAIN_CASES[case]
    env = {k: v.format(reference=dirs / "reference") for k, v in knobs.items()}
    _, programs = dry_run("pretrain.sh", {"DATA": str(dirs / "data"), "OUT": str(dirs / "out"), **env})
    config = check_program_flags(programs[0])
    assert_config(config, {"data": str(dirs / "data"), "out": str(dirs / "out")})
    assert_config(config, {k: v.format(reference=dirs / "reference") if isinstance(v, str) else v
                           for k, v in expected.items()})


FINETUNE_CASES = {
    "from-scratch": ({}, dict(init="", preset="large", num_beams=5, epochs=10, deepspeed_config="ds_configs/zero2.json")),
    "from-pretraining": ({"INIT": "{pretrain}", "NUM_BEAMS": "8", "EPOCHS": "30", "PRESET": "base",
                          "EXTRA_ARGS": "--label-smoothing 0.3 --lr 5e-5"},
                         dict(init="{pretrain}", num_beams=8, epochs=30, preset="base", label_smoothing=0.3, lr=5e-5)),
    "max-steps": ({"INIT": "{pretrain}", "MAX_STEPS": "250", "DS_CONFIG": "ds_configs/zero3.json"},
                  dict(init="{pretrain}", max_steps=250, deepspeed_config="ds_configs/zero3.json")),
}


@pytest.mark.parametrize("case", FINETUNE_CASES)
def test_finetune_knobs_reach_the_config(case, dirs):
    knobs, expected = FINETUNE_CASES[case]
    env = {k: v.format(pretrain=dirs / "pretrain-run") for k, v in knobs.items()}
    _, programs = dry_run("finetune.sh", {"DATA": str(dirs / "data"), "OUT": str(dirs / "out"), **env})
    config = check_program_flags(programs[0])
    assert_config(config, {"data": str(dirs / "data"), "out": str(dirs / "out")})
    assert_config(config, {k: v.format(pretrain=dirs / "pretrain-run") if isinstance(v, str) else v
                           for k, v in expected.items()})


def test_shard_flags_are_accepted(dirs):
    """Outside SLURM (no array task), the script runs the whole write: no task flags, and so an index."""
    from sharded_data import write
    _, programs = dry_run("shard.sh", {"PHOENIX": "/data/phoenix", "OUT": str(dirs / "shards"),
                                       "EXTRA_ARGS": "--resize 224 224 --skip-bad"})
    assert programs[0][:2] == ["-m", "sharded_data.write"]
    args = write.parse_args(programs[0][2:])
    assert (args.phoenix, args.resize, args.skip_bad) == ("/data/phoenix", [224, 224], True)
    assert (args.task_index, args.num_tasks, args.finalize) == (None, None, False)


SHARD_ARRAY_CASES = {  # SLURM's variables for one array task -> (task index, num tasks)
    "default-array": ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0",
                       "SLURM_ARRAY_TASK_MAX": "7"}, (3, 8)),
    "no-task-count": ({"SLURM_ARRAY_TASK_ID": "31", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "31"}, (31, 32)),
    "rerun-some-tasks": ({"SLURM_ARRAY_TASK_ID": "17", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "5",
                          "SLURM_ARRAY_TASK_MAX": "17", "NUM_TASKS": "32"}, (17, 32)),
}


@pytest.mark.parametrize("case", SHARD_ARRAY_CASES)
def test_shard_array_task_flags_are_accepted(case, dirs):
    from sharded_data import write
    env, expected = SHARD_ARRAY_CASES[case]
    _, programs = dry_run("shard.sh", {**env, "SLURM_CPUS_PER_TASK": "16", "MANIFEST": "corpus.tsv",
                                       "OUT": str(dirs / "shards"), "VIDEO_FORMAT": "npy", "EXTRA_ARGS": "--skip-bad"})
    args = write.parse_args(programs[0][2:])             # argparse also checks 0 <= I < N
    assert (args.task_index, args.num_tasks) == expected
    assert (args.workers, args.manifest, args.video_format, args.skip_bad) == (16, "corpus.tsv", "npy", True)


def test_shard_rerun_without_num_tasks_is_refused():
    """--array=5,17 alone would make them tasks 5 and 17 "of 2": the script asks for the array's real size."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "NUM_TASKS"}
    env = {**clean, "DRY_RUN": "1", "PHOENIX": "/data/phoenix", "OUT": "/data/shards", "SLURM_ARRAY_TASK_ID": "5",
           "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "17"}
    result = subprocess.run(["bash", "slurm/shard.sh"], env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "PROGRAM_ARGV" not in result.stdout
    assert "not 0..N-1" in result.stderr and "NUM_TASKS=N" in result.stderr


def test_shard_finalize_builds_the_tasks_command(dirs):
    """The finalize job writes no shard, and its settings flags are the array tasks' (the writer refuses others)."""
    from sharded_data import write
    assert sbatch_directives(REPO / "slurm" / "shard.sh")["array"] == "0-7"
    finalize_options = sbatch_directives(REPO / "slurm" / "shard_finalize.sh")
    assert "array" not in finalize_options and finalize_options["kill-on-invalid-dep"] == "yes"
    knobs = {"CSL_DAILY": "/data/csl", "OUT": str(dirs / "shards"), "EXTRA_ARGS": "--resize 256 256 --skip-bad"}
    _, tasks = dry_run("shard.sh", {**knobs, **SHARD_ARRAY_CASES["default-array"][0]})
    _, finalize = dry_run("shard_finalize.sh", knobs)
    args = write.parse_args(finalize[0][2:])
    assert args.finalize and args.task_index is None and args.csl_daily == "/data/csl"
    task_only = {"--workers", "--task-index", "--num-tasks"}
    settings = [a for i, a in enumerate(tasks[0]) if a not in task_only and tasks[0][i - 1] not in task_only]
    assert [a for a in finalize[0] if a != "--finalize"] == settings


def test_export_flags_are_accepted(dirs):
    _, programs = dry_run("export.sh", {"RUN": str(dirs / "finetune-run"), "CHECK_VIDEOS": "a.mp4 b.mp4"})
    assert programs[0][:2] == ["-m", "recipe.convert_to_hf"] and programs[1][:2] == ["-m", "recipe.translate"]
    for program in programs:
        parse_with_entry_point(program[1], program[2:])


def test_launch_command_is_valid_torchrun(dirs):
    """The per-node torchrun flags parse, and the port follows recipe/dist.py's rule for SLURM jobs."""
    from torch.distributed.run import get_args_parser
    from recipe import dist

    env = {"DATA": str(dirs / "data"), "GPUS_PER_NODE": "4", "SLURM_JOB_NUM_NODES": "3", "SLURM_JOB_ID": "123456"}
    launch, programs = dry_run("pretrain.sh", env)
    assert launch[:1] == ["srun"] and "--ntasks-per-node=1" in launch and "--nodes=3" in launch
    python_at = launch.index("node-launcher") + 1
    torchrun_argv = ["--node_rank=2", *launch[python_at + 1:]]
    args = get_args_parser().parse_args(torchrun_argv)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("3", "4", 2)
    assert int(args.master_port) == dist.SLURM_PORT_BASE + 123456 % dist.SLURM_PORT_SPAN
    assert args.module and args.training_script == "recipe.pretrain"
    assert args.training_script_args == programs[0][2:]
    assert "zero2_bf16" in " ".join(programs[0])        # GPUs: the bf16 config by default

    launch, programs = dry_run("pretrain.sh", {**env, "CPU": "1"})
    args = get_args_parser().parse_args(["--node_rank=0", *launch[launch.index("node-launcher") + 2:]])
    assert args.nproc_per_node == "1"                   # CPU: one process per node
    assert "ds_configs/zero2.json" in programs[0]


def test_pipeline_chains_the_stages(dirs):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    result = subprocess.run(["bash", "slurm/pipeline.sh"], cwd=REPO, capture_output=True, text=True, timeout=30,
                            env={**clean, "DRY_RUN": "1", "DATA": str(dirs / "data"), "RUNS": str(dirs / "runs")})
    assert result.returncode == 0, result.stderr
    submits = [shlex.split(line.partition(":")[2]) for line in result.stderr.splitlines() if line.startswith("SUBMIT:")]
    scripts = [s[-1] for s in submits]
    assert scripts == ["slurm/pretrain.sh", "slurm/pretrain.sh", "slurm/finetune.sh", "slurm/export.sh"]
    # each stage waits for the previous one to succeed
    outs = [dict(a.split("=", 1) for a in s[:s.index("sbatch")]) for s in submits]
    for previous, (submit, out) in zip(outs, list(zip(submits, outs))[1:]):
        dependency = next(a for a in submit if a.startswith("--dependency="))
        assert dependency == f"--dependency=afterok:<{previous.get('OUT', previous.get('RUN'))}>"
    assert outs[0]["NEGATIVES"] == "random" and outs[0]["RECORD_TRAJECTORY_EVERY"] == "5"
    assert outs[1]["NEGATIVES"] == "ps" and outs[1]["REFERENCE_RUN"] == outs[0]["OUT"]
    assert outs[2]["INIT"] == outs[1]["OUT"] and outs[3]["RUN"] == outs[2]["OUT"]


# ------------------------------------------------------------------------- what the training jobs ask for

@pytest.mark.parametrize("name", TRAINING_SCRIPTS)
def test_training_jobs_request_whole_gpu_nodes(name):
    """Each node's CPUs decode video for its GPUs and its RAM holds the loaders' shared memory and pinned
    batches: a job that asks for GPUs only gets one CPU and a default memory share per task."""
    options = sbatch_directives(REPO / "slurm" / name)
    assert "exclusive" in options and options["mem"] == "0"     # all CPUs and all memory of each node
    assert re.fullmatch(r"([\w-]+:)?[1-9]\d*", options["gpus-per-node"]) and options["ntasks-per-node"] == "1"


@pytest.mark.parametrize("allocation, cpus", [({"SLURM_CPUS_ON_NODE": "96"}, "96"),
                                              ({"SLURM_CPUS_ON_NODE": "112", "SLURM_CPUS_PER_TASK": "64"}, "64"),
                                              ({"SLURM_CPUS_ON_NODE": "96", "CPUS_PER_NODE": "48"}, "48")])
def test_the_node_task_gets_the_allocations_cpus_and_gpus(dirs, allocation, cpus):
    """srun is told the CPUs (a step does not inherit --cpus-per-task since Slurm 22.05, and a task bound to one
    CPU starves the loaders) and the GPUs of its node; each of the node's ranks then sizes its loader workers
    from its share of those CPUs."""
    from recipe.build import loader_workers

    env = {"DATA": str(dirs / "data"), "GPUS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_NUM_NODES": "2",
           **allocation}
    for script in TRAINING_SCRIPTS:
        launch, _ = dry_run(script, {**env, "INIT": ""} if script == "finetune.sh" else env)
        step_flags = launch[:launch.index("bash")]
        assert f"--cpus-per-task={cpus}" in step_flags and "--gpus-per-node=8" in step_flags
    assert loader_workers(-1, local_world_size=8, cpus=96) == 11     # 12 cores per GPU: 11 workers + the rank

    launch, _ = dry_run("pretrain.sh", {**env, "CPU": "1"})
    assert not any(flag.startswith("--gpus-per-node") for flag in launch[:launch.index("bash")])
    # The multi-GPU layout emulated on a CPU allocation (tests/test_slurm_cluster.py): 8 processes, no GPU asked of
    # srun, which refuses a step with GPUs the job lacks. Broken variant tried: srun given GPUS_PER_NODE always.
    launch, _ = dry_run("pretrain.sh", {key: value for key, value in env.items() if key != "SLURM_GPUS_ON_NODE"})
    assert not any(flag.startswith("--gpus-per-node") for flag in launch[:launch.index("bash")])
    assert "--nproc_per_node=8" in launch
    launch, _ = dry_run("pretrain.sh", {"DATA": str(dirs / "data"), "GPUS_PER_NODE": "8"})  # outside SLURM
    assert not any(flag.startswith("--cpus-per-task") for flag in launch[:launch.index("bash")])
