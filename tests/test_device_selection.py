"""What a GPU node decides at start-up, checked on CPU: which GPU, how long collectives may wait, the host
group, loader workers from the allocation, frames normalised on the device, and tests that never see a GPU.

Broken variants tried: `set_device(local_rank)` as before (test_one_gpu_per_task_uses_device_zero fails: local
rank 3 of a task that sees one GPU); no timeout passed to DeepSpeed (test_init_distributed_on_a_gpu_node...
fails); `loader_workers` returning --num-workers unchanged for -1 (the auto cases fail); frames_to_device
without the uint8 branch (the equality with the loader's normalisation fails); run_on_ranks without
cpu_only_environment, with conftest's global setting removed (the children see CUDA_VISIBLE_DEVICES unset).
"""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch

from recipe import dist as rdist
from recipe.build import MAX_AUTO_WORKERS, loader_workers
from recipe.device import frames_to_device
from tests.conftest import launch_env
from tests.distributed import run_on_ranks


@pytest.mark.parametrize("local_rank, device_count, expected", [
    (0, 1, 0), (3, 1, 0),        # --gpus-per-task=1: every task sees its one GPU as device 0
    (0, 8, 0), (5, 8, 5),        # one process per GPU on a node that shows them all
    (2, 4, 2),
])
def test_cuda_device_index(local_rank, device_count, expected):
    assert rdist.cuda_device_index(local_rank, device_count) == expected


def test_too_few_visible_gpus_is_an_error_not_a_shared_gpu():
    with pytest.raises(RuntimeError, match="local rank 3 but this process sees only 2 GPUs"):
        rdist.cuda_device_index(3, 2)
    with pytest.raises(RuntimeError, match="no device is visible"):
        rdist.cuda_device_index(0, 0)


def test_process_group_timeout():
    assert rdist.process_group_timeout({}) == timedelta(minutes=rdist.DEFAULT_TIMEOUT_MINUTES) == timedelta(hours=1)
    assert rdist.process_group_timeout({"DEEPSPEED_TIMEOUT": "15"}) == timedelta(minutes=15)
    with pytest.raises(RuntimeError, match="DEEPSPEED_TIMEOUT"):
        rdist.process_group_timeout({"DEEPSPEED_TIMEOUT": "0"})


@pytest.fixture
def restored_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_init_distributed_on_a_gpu_node_with_one_gpu_per_task(monkeypatch, restored_environ):
    """SLURM task 3 of 4 on a node, `--gpus-per-task=1`: CUDA shows one device. The process takes device 0,
    tells DeepSpeed so through LOCAL_RANK, and creates the group with the explicit timeout."""
    import deepspeed

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.setdefault("device", index))
    monkeypatch.setattr(rdist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kwargs: calls.setdefault("init", kwargs))
    slurm = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "3", "SLURM_STEP_TASKS_PER_NODE": "4",
             "SLURM_NODEID": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DEEPSPEED_TIMEOUT"):
        os.environ.pop(name, None)
    os.environ.update(slurm)
    env = rdist.init_distributed()
    assert (env.rank, env.local_rank, env.launcher) == (3, 3, "slurm")
    assert calls["device"] == 0 and os.environ["LOCAL_RANK"] == "0"
    assert calls["init"]["dist_backend"] == "nccl"
    assert calls["init"]["timeout"] == timedelta(minutes=rdist.DEFAULT_TIMEOUT_MINUTES)


def test_cpu_accelerator_requested():
    assert rdist.cpu_accelerator_requested({"DS_ACCELERATOR": "cpu"})
    assert not rdist.cpu_accelerator_requested({}) and not rdist.cpu_accelerator_requested({"DS_ACCELERATOR": "cuda"})


def _what_a_rank_sees(rank: int, world_size: int) -> dict:
    group = rdist.host_group()
    flag = torch.tensor([rank + 1])
    torch.distributed.all_reduce(flag, group=group)
    return {"cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "cuda": torch.cuda.is_available(),
            "host_group_is_world": group is torch.distributed.group.WORLD, "sum": int(flag)}


def test_multi_rank_tests_never_see_a_gpu_and_share_a_host_group():
    """On a one-GPU machine the 2-rank tests picked NCCL and set_device(1): children and launched runs get
    CUDA hidden. On gloo the host group is the default group."""
    results = run_on_ranks(_what_a_rank_sees, world_size=2)
    assert all(r["cuda_visible"] == "" and not r["cuda"] for r in results)
    assert all(r["host_group_is_world"] and r["sum"] == 3 for r in results)
    assert launch_env()["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("requested, local_ranks, cpus, expected", [
    (0, 8, 96, 0), (3, 8, 96, 3),                 # an explicit --num-workers wins
    (-1, 8, 96, 11),                              # 12 cores per GPU: 11 workers + the training process
    (-1, 1, 2, 1),                                # this laptop-sized machine
    (-1, 8, 4, 1),                                # starved: at least one worker, the data must come from somewhere
    (-1, 1, 128, MAX_AUTO_WORKERS),
])
def test_loader_workers_from_the_allocation(requested, local_ranks, cpus, expected):
    assert loader_workers(requested, local_ranks, cpus=cpus) == expected


def test_loader_workers_default_to_this_process_affinity():
    assert loader_workers(-1, 1) == max(1, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0)) - 1))


def test_uint8_frames_are_normalised_on_the_device_like_the_loader_does():
    from sharded_data.transforms import VideoSample, collate_videos

    generator = torch.Generator().manual_seed(0)
    clips = [torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator) for n in (5, 3)]
    samples = [VideoSample(clip, "t", i, i, str(i)) for i, clip in enumerate(clips)]
    raw, normalized = collate_videos(samples, normalize=False), collate_videos(samples, normalize=True)
    assert raw["frames"].dtype == torch.uint8
    mask = raw["frame_mask"]
    on_device = frames_to_device(raw["frames"], "cpu")
    assert on_device.dtype == torch.float32
    torch.testing.assert_close(on_device[mask], normalized["frames"][mask])
    bf16 = frames_to_device(raw["frames"], "cpu", torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16[mask], normalized["frames"][mask].bfloat16())
    # already normalised frames pass through unchanged
    torch.testing.assert_close(frames_to_device(normalized["frames"], "cpu"), normalized["frames"])


def test_tf32_for_fp32_runs_on_gpus_and_never_inside_the_similarity(monkeypatch):
    from recipe.seeding import enable_tf32
    from recipe.similarity import exact_fp32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        enable_tf32()  # no GPU here: nothing changes
        assert torch.backends.cuda.matmul.allow_tf32 is False
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        enable_tf32()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with exact_fp32(torch.device("cpu")):
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_sign_encoder_picks_real_frames_from_a_host_count_like_the_boolean_index():
    """With the count from the batch's CPU mask, the real frames are found without a device sync (nonzero_static);
    outputs and gradients equal the boolean-index path (train mode: BatchNorm on real frames only)."""
    from recipe.modeling import SignTranslationModel
    from recipe.presets import build_config

    torch.manual_seed(0)
    model = SignTranslationModel(build_config("tiny", vocab_size=40, attn_implementation="eager", dropout=0.0)).train()
    frames = torch.randn(3, 9, 3, 16, 16)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for row, length in enumerate((9, 4, 6)):
        mask[row, :length] = True
    outputs, grads = [], []
    for count in (None, int(mask.sum())):
        model.zero_grad()
        out = model.sign_encoder(frames, mask, num_real_frames=count)
        out.last_hidden_state.square().sum().backward()
        outputs.append(out.last_hidden_state.detach())
        grads.append(model.sign_encoder.frame_cnn.layers[0].weight.grad.clone())
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1])
