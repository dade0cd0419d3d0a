"""The training and memory benchmarks still run, in their quickest modes, and say sensible things.

`bench_training.py --smoke` runs in its own process (it creates a process group, which must not leak into
the test process): synthetic shards, a fake reference run, one rank, both negative arms, one step each.
`bench_memory_scale.py --smoke` runs here: it builds the large preset on the meta device only.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_bench_training_smoke(tmp_path):
    results = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--smoke",
                           "--work", str(tmp_path / "work"), "--json", str(results)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PS/random step time" in done.stdout
    mask_rows = re.findall(r"^\| (pooled|token) \| ([\d.]+) \| ([\d.]+) \|$", done.stdout, flags=re.M)
    assert [row[0] for row in mask_rows] == ["pooled", "token"] and all(float(row[1]) > 0 for row in mask_rows)
    (job,) = json.loads(results.read_text())
    arms = job["arms"]
    assert set(arms) == {"random", "ps"}
    for arm in arms.values():
        assert arm["step"] > 0 and arm["loss fwd"] > 0 and arm["loss bwd"] > 0
        assert arm["gather"] + arm["loss fwd"] + arm["loss bwd"] < arm["step"]  # parts of the step, not more
    assert arms["ps"]["ps mask"] > 0 and arms["random"]["ps mask"] == 0  # the PS hook ran in the PS arm only
    assert job["peak_rss_mib"] >= job["rss_before_model_mib"] > 0
    assert 0 < job["trainable"] <= job["params"]


def test_bench_memory_scale_smoke(capsys):
    bench = _load("bench_memory_scale")
    bench.main(["--smoke"])
    out = capsys.readouterr().out
    assert "largest layer: `text_encoder.embed_tokens`" in out  # the frozen, tied 250k-token embedding
    total, trainable = (float(x) for x in re.search(r"\*\*total\*\* \| \*\*([\d.]+)M\*\* \| \*\*([\d.]+)M\*\*", out).groups())
    assert 0 < trainable < total / 2  # LoRA + frozen text encoder: most of the large preset is frozen
    ratios = [float(row.rsplit("|", 2)[-2]) for row in out.splitlines() if row.startswith(("| no grad", "| with grad"))]
    assert len(ratios) == 3 and all(0.8 < r < 1.25 for r in ratios), out  # the loss-memory formula matches a real call


def test_loss_memory_grows_with_local_times_global_batch():
    bench = _load("bench_memory_scale")
    one = bench.loss_bytes(1024, 8, 75, 40, 1024)["similarity"]
    double = bench.loss_bytes(2048, 8, 75, 40, 1024)["similarity"]
    assert 3.5 < double / one < 4.1  # b x G: doubling G at fixed GPUs quadruples the kept similarities
    assert bench.largest_fitting_batch(0, 8, 75, 40, 1024) == 0
    g = bench.largest_fitting_batch(10 * 2**30, 8, 75, 40, 1024)
    assert bench.loss_bytes(g, 8, 75, 40, 1024)["total"] <= 10 * 2**30 < bench.loss_bytes(g + 8, 8, 75, 40, 1024)["total"]


def test_timed_loss_hands_deepspeed_the_same_loss_and_gradients():
    """The timing wrapper cuts the graph at the features; what it returns must train exactly like the real loss."""
    import torch

    from recipe.contrastive import ContrastiveLoss
    from recipe.features import ContrastiveFeatures

    bench = _load("bench_training")
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(6, 5, 16, generator=gen, requires_grad=True)
    text = torch.randn(6, 4, 16, generator=gen, requires_grad=True)
    scale = torch.nn.Parameter(torch.tensor([2.0]))
    video_mask, text_mask = torch.rand(6, 5, generator=gen) > 0.3, torch.ones(6, 4, dtype=torch.bool)
    video_mask[:, 0] = True
    ids, sentences = torch.arange(6), torch.tensor([0, 1, 2, 2, 3, 4])
    keep_half = lambda local, full: (local[:, None] + full[None, :]) % 2 == 0  # noqa: E731  a selection hook

    def run(loss_fn):
        video.grad = text.grad = scale.grad = None
        features = ContrastiveFeatures(torch.nn.functional.normalize(video, dim=-1), video_mask,
                                       torch.nn.functional.normalize(text, dim=-1), text_mask)
        loss = loss_fn(features, scale.clamp(0, 4.6), ids, sentences, selection=keep_half)["loss"]
        loss.backward()
        return loss.detach(), video.grad.clone(), text.grad.clone(), scale.grad.clone()

    plain = run(ContrastiveLoss())
    clock = bench.PhaseClock()
    timed = run(bench.TimedLoss(ContrastiveLoss(), clock))
    for a, b in zip(plain, timed):
        torch.testing.assert_close(a, b)
    phases = clock.flush()
    assert {"gather", "loss fwd", "loss bwd", "ps mask"} <= set(phases) and all(v >= 0 for v in phases.values())
