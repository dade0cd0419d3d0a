"""End-to-end tests of stage-1 pretraining (`recipe.pretrain`, the shared loop `recipe.training`).

Real runs on tiny synthetic shards: two-rank runs go through the real launchers (gloo, OMP_NUM_THREADS=1),
one-rank runs call `main(argv)` in this process. What they show: ZeRO-1/2/3 give the same falling losses;
a run resumed from a mid-run checkpoint, or after a preemption signal (exit code 3), trains exactly as
the uninterrupted run; a two-rank checkpoint resumes on one rank with the same parameters; a bad
configuration is refused before any training; on two ranks, Pair Selection trains every rank on its slice of
the sampler's plan; `--reference-run self` switches from random negatives to Pair Selection, resumes exactly
in either phase and runs on two ranks; the run directory describes itself.
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from recipe.pair_selection import rank_slice
from tests.conftest import (DS_CONFIGS, LAUNCH_TIMEOUT_S, REPO, TWO_RANK_STEPS, copy_run, launch, launch_env,
                            launcher_command, losses, read_metrics, reference_args, run_main, train_args)
from tests.distributed import run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_directory_describes_itself(reference_run):
    for name in ("config.json", "ds_config.json", "command.txt", "environment.json", "metrics.jsonl",
                 "model_config/config.json", "tokenizer/tokenizer_config.json", "checkpoints/latest"):
        assert (reference_run / name).is_file(), f"{name} missing from the run directory"
    assert list((reference_run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"
    assert sorted(p.name for p in (reference_run / "trajectories").iterdir()) == [
        f"ref-{epoch:04d}.safetensors" for epoch in (1, 2, 3, 4)]
    config = json.loads((reference_run / "config.json").read_text())
    ds_config = json.loads((reference_run / "ds_config.json").read_text())
    assert config["record_trajectory_every"] == 1 and config["negatives"] == "random"
    assert ds_config["train_batch_size"] == config["micro_batch_size"] == 16  # one rank, no accumulation
    assert json.loads((reference_run / "environment.json").read_text())["world_size"] == 1
    latest = (reference_run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-000008"  # 4 epochs x 32 samples / 16 per step
    assert json.loads((reference_run / "checkpoints" / latest / "complete.json").read_text())["step"] == 8
    assert sorted(read_metrics(reference_run)) == list(range(1, 9))


@pytest.mark.slow
def test_zero_stages_give_identical_falling_losses(zero_runs):
    by_stage = {stage: losses(run) for stage, run in zero_runs.items()}
    assert len(by_stage[2]) == TWO_RANK_STEPS
    assert by_stage[1] == by_stage[2], by_stage  # bitwise
    # ZeRO-3 reduce-scatters the gradients (another summation order than ZeRO-1/2's all-reduce): its losses
    # may differ in the last float32 bit (the weights by ~1e-7: test_export compares the exported networks).
    assert by_stage[3] == pytest.approx(by_stage[2], rel=2e-7, abs=0), by_stage
    first, last = by_stage[2][:4], by_stage[2][-4:]
    assert sum(last) / 4 < sum(first) / 4 - 0.1, f"loss did not fall: {by_stage[2]}"
    for stage, run in zero_runs.items():
        marker = json.loads((run / "checkpoints" / "step-000012" / "complete.json").read_text())
        assert marker["zero_stage"] == stage and marker["world_size"] == 2


def test_resume_from_a_mid_run_checkpoint_is_exact(reference_run, shards, tmp_path):
    """Crash after step 3 (the checkpoint of step 3 survives, later ones are lost), rerun the same command."""
    from recipe import pretrain
    from safetensors.torch import load_file

    crashed = copy_run(reference_run, tmp_path / "crashed")
    for tag in ("step-000006", "step-000008"):
        shutil.rmtree(crashed / "checkpoints" / tag)
    (crashed / "metrics.jsonl").unlink()
    for epoch in (2, 3, 4):  # written after steps 4, 6 and 8: lost as well (epoch 1's, after step 2, survives)
        (crashed / "trajectories" / f"ref-{epoch:04d}.safetensors").unlink()

    run_main(pretrain.main, reference_args(shards, crashed))  # the reference run's command, same seed

    resumed, original = read_metrics(crashed), read_metrics(reference_run)
    assert sorted(resumed) == [4, 5, 6, 7, 8], "the resumed run must start after the step-3 checkpoint"
    for step in resumed:
        for key in ("loss", "contrastive_loss", "translation_loss", "lr"):
            assert resumed[step][key] == original[step][key], (step, key, resumed[step], original[step])
    for epoch in (2, 3, 4):  # embeddings of the whole training split: the weights are the same too
        name = f"trajectories/ref-{epoch:04d}.safetensors"
        again, before = load_file(crashed / name), load_file(reference_run / name)
        assert again.keys() == before.keys()
        for key in before:
            assert torch.equal(again[key], before[key]), (name, key)


def _workers(launcher: psutil.Process) -> list[psutil.Process]:
    return [p for p in launcher.children(recursive=True) if any(a.startswith("--local_rank") for a in p.cmdline())]


@pytest.mark.slow
def test_signal_checkpoints_exits_3_and_resumes_to_the_same_losses(zero_runs, shards, tmp_path):
    run = tmp_path / "preempted"
    args = train_args(shards, run, "--max-steps", str(TWO_RANK_STEPS), "--save-every", "4", "--keep-last", "5")
    process = subprocess.Popen(launcher_command("pretrain.py", args), cwd=REPO, env=launch_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (run / "metrics.jsonl").exists() or 1 not in read_metrics(run):
            assert process.poll() is None, f"the run ended before step 1:\n{process.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "no step 1 in time"
            time.sleep(0.05)
        workers = _workers(psutil.Process(process.pid))
        assert len(workers) == 2
        for worker in workers:  # as SLURM's --signal does; the deepspeed launcher itself would kill on SIGTERM
            worker.send_signal(signal.SIGUSR1)
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 3, output[-4000:]
    stopped = max(read_metrics(run))
    assert 1 <= stopped < TWO_RANK_STEPS, f"stopped at step {stopped}"
    assert f"preempted: saved step-{stopped:06d}" in output
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{stopped:06d}"
    assert json.loads((run / "checkpoints" / f"step-{stopped:06d}" / "complete.json").read_text())["step"] == stopped

    requeued = launch("pretrain.py", args)  # the requeued job: the very same command
    assert f"resumed at step {stopped}" in requeued.stdout + requeued.stderr
    assert losses(run) == losses(zero_runs[2])  # bitwise, every step, before and after the preemption


@pytest.fixture(scope="module")
def one_rank_resume(zero_runs, shards, tmp_path_factory, one_thread):
    """A copy of the finished two-rank ZeRO-2 run trained 2 steps further on one rank (universal checkpoint),
    with the module's state right after the checkpoint was loaded."""
    from recipe import pretrain
    from recipe.checkpointing import CheckpointManager

    run = copy_run(zero_runs[2], tmp_path_factory.mktemp("universal") / "one-rank")
    loaded = {}
    resume = CheckpointManager.resume

    def recording_resume(self, engine, tag=None):
        state = resume(self, engine, tag)
        loaded.update({name: p.detach().clone() for name, p in engine.module.state_dict().items()})
        return state

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CheckpointManager, "resume", recording_resume)
        run_main(pretrain.main, train_args(shards, run, "--max-steps", str(TWO_RANK_STEPS + 2), "--save-every", "4"))
    return run, loaded


def _saved_two_rank_state(zero_runs) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(zero_runs[2] / "checkpoints"), tag="step-000012")


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_rank(one_rank_resume, zero_runs):
    """ZeRO-2, 2 ranks -> 1 rank through DeepSpeed's universal checkpoint: same parameters, training goes on."""
    run, loaded = one_rank_resume
    saved = _saved_two_rank_state(zero_runs)
    assert loaded.keys() == saved.keys()
    buffers = set(_buffer_names(run))
    parameters = [name for name in saved if name not in buffers]
    assert len(parameters) > 100
    for name in parameters:
        assert torch.equal(loaded[name], saved[name]), name
    assert (run / "checkpoints" / "step-000012-universal").is_dir()
    metrics = read_metrics(run)
    assert sorted(metrics)[-2:] == [13, 14] and all(math.isfinite(metrics[s]["loss"]) for s in (13, 14))
    marker = json.loads((run / "checkpoints" / "step-000014" / "complete.json").read_text())
    assert marker["world_size"] == 1


def _buffer_names(run: Path) -> list[str]:
    """The buffers (BatchNorm statistics, ...) of the run's stage-1 module, named as in its checkpoints."""
    from recipe.modeling import SignTranslationConfig, SignTranslationModel

    model = SignTranslationModel(SignTranslationConfig.from_pretrained(run / "model_config"))
    return ["model." + name for name, _ in model.named_buffers()]


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_rank_with_its_buffers(one_rank_resume, zero_runs):
    """A universal load restores parameters only; the buffers (BatchNorm statistics) are copied over too."""
    run, loaded = one_rank_resume
    saved = torch.load(zero_runs[2] / "checkpoints" / "step-000012" / "mp_rank_00_model_states.pt",
                       map_location="cpu", weights_only=False)["module"]
    names = _buffer_names(run)
    assert any("running_mean" in name for name in names)
    for name in names:
        assert torch.equal(loaded[name], saved[name]), name


def _write_json(path: Path, content: dict) -> str:
    path.write_text(json.dumps(content))
    return str(path)


@pytest.mark.parametrize("problem", ["bf16_on_cpu", "batch_size_mismatch", "ps_without_reference",
                                     "reference_without_trajectories", "reference_too_short",
                                     "reference_without_tokens", "self_reference_without_ps_epochs"])
def test_bad_configuration_is_refused_before_training(problem, shards, tmp_path, monkeypatch, reference_run):
    import deepspeed

    from recipe import pretrain
    from recipe.ds_config import DeepSpeedConfigError

    def no_engine(*args, **kwargs):
        raise AssertionError("deepspeed.initialize was called: the bad configuration got past the checks")

    monkeypatch.setattr(deepspeed, "initialize", no_engine)
    out = tmp_path / "run"
    extra, ds_config, expected, message = [], "zero2.json", DeepSpeedConfigError, ""
    if problem == "bf16_on_cpu":
        if torch.cuda.is_available():
            pytest.skip("bf16 is allowed on a CUDA machine")
        ds_config, message = "zero2_bf16.json", "bf16"
    elif problem == "batch_size_mismatch":
        config = json.loads((DS_CONFIGS / "zero2.json").read_text()) | {"train_batch_size": 999}
        ds_config, message = _write_json(tmp_path / "ds.json", config), "train_batch_size"
    elif problem == "ps_without_reference":
        extra, expected, message = ["--negatives", "ps"], SystemExit, "--reference-run"
    elif problem == "reference_without_trajectories":
        (tmp_path / "empty-reference").mkdir()
        extra = ["--negatives", "ps", "--reference-run", str(tmp_path / "empty-reference")]
        expected, message = FileNotFoundError, "--record-trajectory-every"
    elif problem in ("reference_too_short", "reference_without_tokens"):
        short = tmp_path / "reference" / "trajectories"
        shutil.copytree(reference_run / "trajectories", short)
        if problem == "reference_too_short":
            for epoch in (3, 4):
                (short / f"ref-{epoch:04d}.safetensors").unlink()
            expected, message = ValueError, "2 reference checkpoint(s) (after epochs [1, 2]); Pair Selection needs at least 3"
        else:  # the default --ps-similarity is the loss's token similarity: a reference without tokens cannot serve
            from safetensors.torch import load_file, save_file

            for path in short.iterdir():
                save_file({k: v for k, v in load_file(path).items() if "tokens" not in k and "mask" not in k}, path)
            expected, message = ValueError, "--ps-similarity cls / mean / pooled"
        extra = ["--negatives", "ps", "--reference-run", str(tmp_path / "reference")]
    else:  # 2 epochs, but the own trajectory's 3rd checkpoint comes after epoch 3
        extra = ["--negatives", "ps", "--reference-run", "self", "--record-trajectory-every", "1", "--epochs", "2"]
        expected, message = SystemExit, "no epoch would be left for Pair Selection"
    with pytest.raises(expected) as error:
        run_main(pretrain.main, train_args(shards, out, *(["--max-steps", "2"] if "--epochs" not in extra else []),
                                           *extra, ds_config=ds_config))
    assert message in str(error.value)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("fraction, accepted", [(0.0, False), (1.5, False), (1.0, True), (0.25, True)])
def test_ps_keep_fraction_is_checked_before_any_compute(fraction, accepted, tmp_path):
    from recipe.config import PretrainConfig, parse_config

    argv = ["--data", "d", "--out", str(tmp_path), "--negatives", "ps", "--reference-run", "r",
            "--ps-keep-fraction", str(fraction)]
    if accepted:
        assert parse_config(PretrainConfig, argv).ps_keep_fraction == fraction
    else:
        with pytest.raises(SystemExit, match="--ps-keep-fraction must lie in"):
            parse_config(PretrainConfig, argv)


def test_help_shows_the_papers_defaults():
    """No in-loss mask, PS scored with the loss's similarity, the log curriculum over e / E, the delta score;
    every extension a named flag."""
    from recipe.config import PretrainConfig
    from recipe.pretrain import build_parser, ps_similarity_of

    text = " ".join(build_parser().format_help().split())  # unwrapped
    for fragment in ("--ps-keep-fraction PS_KEEP_FRACTION our extension, off at 1.0",
                     "sliding from the easiest to the hardest with the curriculum (default: 1.0)",
                     "loss = the loss's --similarity (the paper: the similarity it trains with)", "(default: loss)",
                     "alpha (0 = easiest, 1 = hardest candidate) = f(e / E) at epoch e of E; log: 1 + 0.1 ln(x + e^-10)",
                     "'self' (beyond the paper: one run instead of two)", "--self-reference-checkpoints",
                     "record a reference checkpoint (embed the training split) after epoch 1 and then every k epochs"):
        assert fragment in text, fragment
    config = PretrainConfig(data="d", out="o")
    assert (config.ps_keep_fraction, config.ps_similarity, config.curriculum, config.ps_score) == (1.0, "loss", "log",
                                                                                                   "delta")
    assert ps_similarity_of(config) == "token" == config.similarity
    assert ps_similarity_of(PretrainConfig(data="d", out="o", similarity="cls")) == "cls"


@pytest.mark.parametrize("extra, message", [
    (["--reference-run", "self"], "add --negatives ps"),
    (["--negatives", "ps", "--reference-run", "self"], "give --record-trajectory-every k >= 1"),
    (["--negatives", "ps", "--reference-run", "self", "--record-trajectory-every", "1",
      "--self-reference-checkpoints", "2"], "--self-reference-checkpoints must be >= 3"),
])
def test_self_reference_settings_are_checked(extra, message, tmp_path):
    from recipe.config import PretrainConfig, parse_config

    with pytest.raises(SystemExit, match=message):
        parse_config(PretrainConfig, ["--data", "d", "--out", str(tmp_path), *extra])


def _train_and_record(rank: int, world_size: int, argv: list[str]) -> list[tuple[int, list[int]]]:
    """pretrain.main on this rank, recording the (epoch, sample ids) of every micro-batch it trains on."""
    from recipe import pretrain

    trained = []
    compute_loss = pretrain.PretrainingTask.compute_loss

    def recording(self, engine, batch, progress):
        trained.append((self.epoch, batch["sample_ids"][batch["valid"]].tolist()))
        return compute_loss(self, engine, batch, progress)

    pretrain.PretrainingTask.compute_loss = recording
    pretrain.main(argv)
    return trained


def _expected_plan(run: Path, reference: Path, shards: Path, global_batch: int, num_epochs: int,
                   first_ps_epoch: int) -> list[tuple[int, list[int]]]:
    """The epochs' global batches recomputed here (another process, another hash seed): random ones before
    `first_ps_epoch`, then the curriculum sampler's from the reference trajectory and the run's score cache."""
    from recipe.curriculum import CurriculumSchedule
    from recipe.pair_selection import CurriculumBatchSampler, PairScorer, RandomBatchSampler, score_weights
    from recipe.token_scores import CACHE_DIR, cached_symmetric_scores
    from recipe.trajectory_store import load_trajectory
    from sharded_data.format import load_index

    trajectory = load_trajectory(reference, load_tokens=False)
    weights, used = score_weights("delta", trajectory.num_checkpoints)
    scores = cached_symmetric_scores(trajectory, "delta", weights, used, "token", run / CACHE_DIR)
    curriculum = CurriculumBatchSampler(PairScorer(trajectory, "delta", "token", symmetric_scores=scores),
                                        global_batch, CurriculumSchedule("log"), num_epochs, seed=0, pool_size=512,
                                        first_epoch=first_ps_epoch)
    random = RandomBatchSampler(load_index(shards, "train").sample_id, global_batch, seed=0)
    return [(epoch, batch) for epoch in range(num_epochs)
            for batch in (curriculum if epoch >= first_ps_epoch else random).epoch_batches(epoch)]


def _check_trained_batches(per_rank, plan) -> None:
    for rank, trained in enumerate(per_rank):
        assert trained == [(epoch, rank_slice(batch, rank, len(per_rank))) for epoch, batch in plan], rank


@pytest.mark.slow
def test_pair_selection_pretraining_on_two_ranks(reference_run, shards, tmp_path, monkeypatch):
    """Every rank trains on its slice of exactly the batches the curriculum sampler plans (recomputed in this
    process), every in-batch negative counts (no mask by default), alpha follows e / E.
    (Broken variant tried: each rank slicing its own copy of the plan with the rank order reversed: fails.)"""
    run = tmp_path / "scl"
    monkeypatch.setenv("PYTHONHASHSEED", "7")  # the ranks' hash seed differs from this process's
    per_rank = run_on_ranks(_train_and_record, world_size=2, init_process_group=False, args=(train_args(
        shards, run, "--negatives", "ps", "--reference-run", str(reference_run), "--epochs", "2", "--save-every", "8"),))
    _check_trained_batches(per_rank, _expected_plan(run, reference_run, shards, 8, 2, first_ps_epoch=0))
    metrics = read_metrics(run)
    assert sorted(metrics) == list(range(1, 9))
    alphas = [metrics[s]["ps_alpha"] for s in sorted(metrics)]
    assert alphas == [0.0] * 4 + [pytest.approx(1 + 0.1 * math.log(0.5 + math.exp(-10)))] * 4, alphas  # log, e / E
    assert all(metrics[s]["kept_negative_fraction"] == 1.0 for s in metrics)  # the paper: no in-loss mask
    assert all(math.isfinite(metrics[s]["loss"]) for s in metrics)
    assert json.loads((run / "config.json").read_text())["reference_run"] == str(reference_run)
    assert (run / "checkpoints" / "step-000008" / "complete.json").is_file()


class _FakeEngine:
    """What embed_split needs of an engine: features that depend on each sample alone (its first 8 pixel values per
    frame; its token ids), so one process and two ranks must give the same numbers."""

    device = torch.device("cpu")
    module = torch.nn.Module()

    def bfloat16_enabled(self):
        return False

    def fp16_enabled(self):
        return False

    def eval(self):
        self.module.train(False)

    def train(self, mode=True):
        self.module.train(mode)

    def __call__(self, frames, frame_mask, text_ids, text_mask, labels, num_real_frames=None):
        from recipe.features import ContrastiveFeatures

        video = frames.flatten(2)[..., :8].float() * frame_mask[..., None]
        text = (text_ids.float()[..., None] + torch.arange(8.0)) * text_mask[..., None]
        return ContrastiveFeatures(video, frame_mask.bool(), text, text_mask.bool()), None, None


def _embed_on_ranks(rank: int, world_size: int, shards: str, tokenizer_dir: str):
    from types import SimpleNamespace

    from recipe.dist import DistEnv
    from recipe.pretrain import PretrainingTask
    from recipe.tokenizer import load_tokenizer
    from sharded_data.reader import ReaderConfig

    task = SimpleNamespace(config=SimpleNamespace(data=shards, micro_batch_size=2, max_text_tokens=16),
                           env=DistEnv(rank=rank, world_size=world_size, local_rank=rank, local_world_size=world_size),
                           reader=ReaderConfig(frame_size=16, max_frames=16, num_workers=0),
                           tokenizer=load_tokenizer(tokenizer_dir))
    return PretrainingTask.embed_split(task, _FakeEngine(), "train", storage=torch.float16)


def test_trajectory_embeddings_are_gathered_on_rank_0_only_in_fp16(shards, reference_run):
    """Two gloo ranks embed half the split each and send it, batch by batch, to rank 0 alone (the others keep
    nothing), as fp16: the same features, bitwise, as one process embedding everything. (Broken variant tried:
    every rank returning a result, as the former all_gather_object did: fails.)"""
    args = (str(shards), str(reference_run / "tokenizer"))
    alone = _embed_on_ranks(0, 1, *args)
    rank0, rank1 = run_on_ranks(_embed_on_ranks, world_size=2, args=args)
    assert rank1 is None
    ids, sentences, features = rank0
    assert ids.tolist() == sorted(ids.tolist()) and len(ids) == 32
    assert torch.equal(ids, alone[0]) and torch.equal(sentences, alone[1])
    for name in ("video", "video_mask", "text", "text_mask"):
        mine, reference = getattr(features, name), getattr(alone[2], name)
        length = min(mine.shape[1], reference.shape[1])  # padded to each process's longest
        assert torch.equal(mine[:, :length], reference[:, :length]), name
    assert features.video.dtype == features.text.dtype == torch.float16
    norms = features.video.float().norm(dim=-1)[features.video_mask]
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-3, rtol=0)  # normalised in float32


# --- one run instead of two: --reference-run self ---------------------------------------------------------
def self_reference_args(data: Path, out: Path) -> list[str]:
    """One rank, 16 samples per step, 5 epochs of 2 steps: random negatives while recording its own trajectory
    after epochs 1, 2, 3 (steps 2, 4, 6), Pair Selection in epochs 3 and 4 (steps 7-10); checkpoints at steps 3
    (warm-up, mid-epoch), 6 (the switch), 9 (Pair Selection, mid-epoch) and 10."""
    return train_args(data, out, "--negatives", "ps", "--reference-run", "self", "--record-trajectory-every", "1",
                      "--epochs", "5", "--save-every", "3", "--keep-last", "5", micro_batch=16)


@pytest.fixture(scope="module")
def self_reference_run(shards, tmp_path_factory, one_thread) -> Path:
    from recipe import pretrain

    out = tmp_path_factory.mktemp("self") / "run"
    run_main(pretrain.main, self_reference_args(shards, out))
    return out


def test_self_reference_switches_from_random_to_pair_selection(self_reference_run, shards):
    run = self_reference_run
    metrics = read_metrics(run)
    assert sorted(metrics) == list(range(1, 11))
    assert not any("ps_alpha" in metrics[s] for s in range(1, 7))  # warm-up: random negatives
    # Pair Selection over the remaining epochs 3 and 4: alpha = f((e - 3) / (5 - 3)), log schedule
    assert [metrics[s]["ps_alpha"] for s in range(7, 11)] == [0.0, 0.0] + [
        pytest.approx(1 + 0.1 * math.log(0.5 + math.exp(-10)))] * 2
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == [f"ref-{e:04d}.safetensors" for e in (1, 2, 3)]
    assert len(list((run / "ps_scores").glob("*/manifest.json"))) == 1  # token scores, computed once
    assert (run / "checkpoints" / "step-000010" / "complete.json").is_file()


@pytest.mark.parametrize("crash_after, lost_trajectories", [(3, (2, 3)), (9, ())], ids=["warm-up", "pair-selection"])
def test_self_reference_resumes_exactly_in_either_phase(self_reference_run, shards, tmp_path, crash_after,
                                                       lost_trajectories):
    """Crash after step 3 (random phase: the later trajectory points and the switch are redone) or after step 9
    (Pair Selection phase; the score cache is lost too and recomputed), rerun the same command: the same
    losses, bitwise, and the same trajectory files. (Broken variant tried: the curriculum anchored at the epoch
    the process started Pair Selection in rather than the first PS epoch: the Pair Selection case fails.)"""
    from safetensors.torch import load_file

    from recipe import pretrain

    crashed = copy_run(self_reference_run, tmp_path / "crashed")
    for tag in sorted(p.name for p in (crashed / "checkpoints").glob("step-*")):
        if int(tag.split("-")[1]) > crash_after:
            shutil.rmtree(crashed / "checkpoints" / tag)
    (crashed / "metrics.jsonl").unlink()
    shutil.rmtree(crashed / "ps_scores")
    for epoch in lost_trajectories:
        (crashed / "trajectories" / f"ref-{epoch:04d}.safetensors").unlink()

    run_main(pretrain.main, self_reference_args(shards, crashed))

    resumed, original = read_metrics(crashed), read_metrics(self_reference_run)
    assert sorted(resumed) == list(range(crash_after + 1, 11))
    for step in resumed:
        for key in ("loss", "contrastive_loss", "translation_loss", "lr"):
            assert resumed[step][key] == original[step][key], (step, key, resumed[step], original[step])
    for epoch in (1, 2, 3):
        name = f"trajectories/ref-{epoch:04d}.safetensors"
        again, before = load_file(crashed / name), load_file(self_reference_run / name)
        assert again.keys() == before.keys() and all(torch.equal(again[k], before[k]) for k in before), name


@pytest.mark.slow
def test_self_reference_on_two_ranks_trains_on_the_planned_batches(shards, tmp_path, monkeypatch):
    """2 gloo ranks, 16 samples per step: random batches in epochs 0-2 while recording, then the curriculum's
    batches from the run's own trajectory in epoch 3; each rank's slice is what it trained on."""
    run = tmp_path / "self-two-ranks"
    monkeypatch.setenv("PYTHONHASHSEED", "11")
    per_rank = run_on_ranks(_train_and_record, world_size=2, init_process_group=False, args=(train_args(
        shards, run, "--negatives", "ps", "--reference-run", "self", "--record-trajectory-every", "1",
        "--epochs", "4", "--save-every", "100", micro_batch=8),))
    _check_trained_batches(per_rank, _expected_plan(run, run, shards, 16, 4, first_ps_epoch=3))
    metrics = read_metrics(run)
    assert [("ps_alpha" in metrics[s]) for s in sorted(metrics)] == [False] * 6 + [True] * 2


def test_curriculum_spans_the_epochs_that_max_steps_reaches():
    from recipe.config import PretrainConfig
    from recipe.pretrain import planned_epochs

    by_epochs = PretrainConfig(data="d", out="o", epochs=7)
    assert planned_epochs(by_epochs, num_samples=1000, global_batch=16) == 7
    # 1000 // 16 = 62 batches = 31 steps per epoch with grad_accum 2: 100 steps reach into the 4th epoch
    by_steps = PretrainConfig(data="d", out="o", epochs=7, max_steps=100, grad_accum=2)
    assert planned_epochs(by_steps, num_samples=1000, global_batch=16) == 4


def _record_translation_batches(monkeypatch, trained: list) -> None:
    """Record, per micro-batch, (epoch, contrastive batch ids, ids of the batch whose texts the translation loss
    got as labels): the labelled call to the engine is matched to a batch by its tokenized texts."""
    from recipe import pretrain
    from recipe.text import tokenize_targets

    compute_loss = pretrain.PretrainingTask.compute_loss

    def recording(self, engine, batch, progress):
        parts = batch if "translation" in batch else {"contrastive": batch, "translation": batch}
        labelled = []

        class Spy:
            def __getattr__(self, name):
                return getattr(engine, name)

            def __call__(self, frames, frame_mask, text_ids, text_mask, labels=None, **options):
                if labels is not None:
                    labelled.append(text_ids.clone())
                return engine(frames, frame_mask, text_ids, text_mask, labels, **options)

        out = compute_loss(self, Spy(), batch, progress)
        ids = {name: part["sample_ids"][part["valid"]].tolist() for name, part in parts.items()}
        texts = {name: tokenize_targets(self.tokenizer, part["texts"], self.config.max_text_tokens).ids
                 for name, part in parts.items()}
        assert len(labelled) == 1
        source = [name for name in ("translation", "contrastive") if torch.equal(labelled[0], texts[name])]
        trained.append((self.epoch, ids["contrastive"], ids[source[0]] if source else None))
        return out

    monkeypatch.setattr(pretrain.PretrainingTask, "compute_loss", recording)


@pytest.mark.slow
def test_iid_translation_batches_pair_curriculum_and_random_batches(reference_run, shards, tmp_path, monkeypatch):
    """--translation-batches iid: in every Pair Selection step the contrastive loss sees the curriculum's batch
    and the translation loss the random arm's batch of the same position; a run resumed mid-epoch continues both
    streams exactly. (Broken variants tried: labels on the contrastive batch; the translation stream not
    skipped on resume: each fails here.)"""
    from recipe import pretrain
    from recipe.pair_selection import RandomBatchSampler
    from sharded_data.format import load_index

    def argv(out: Path) -> list[str]:
        return train_args(shards, out, "--negatives", "ps", "--reference-run", str(reference_run),
                          "--translation-batches", "iid", "--epochs", "2", "--save-every", "3", "--keep-last", "10")

    run = tmp_path / "iid"
    trained: list = []
    _record_translation_batches(monkeypatch, trained)
    run_main(pretrain.main, argv(run))
    curriculum = _expected_plan(run, reference_run, shards, 4, 2, first_ps_epoch=0)
    random = RandomBatchSampler(load_index(shards, "train").sample_id, 4, seed=0)
    assert [(epoch, ids) for epoch, ids, _ in trained] == curriculum
    assert [(epoch, ids) for epoch, _, ids in trained] == [(e, b) for e in range(2) for b in random.epoch_batches(e)]
    assert curriculum != [(e, b) for e in range(2) for b in random.epoch_batches(e)]

    crashed = copy_run(run, tmp_path / "crashed")
    for tag in (crashed / "checkpoints").glob("step-*"):
        if int(tag.name.split("-")[1]) > 3:
            shutil.rmtree(tag)
    (crashed / "metrics.jsonl").unlink()
    run_main(pretrain.main, argv(crashed))
    resumed, original = read_metrics(crashed), read_metrics(run)
    assert sorted(resumed) == list(range(4, 17))
    for step in resumed:
        for key in ("loss", "contrastive_loss", "translation_loss"):
            assert resumed[step][key] == original[step][key], (step, key)
