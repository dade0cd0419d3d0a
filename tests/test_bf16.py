"""bf16 on CPU: the precision GPU runs train in, through DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu).

* The contrastive loss from bf16 features agrees with fp64 within a stated tolerance at the largest logit
  scale (100), because normalisation and similarity run in fp32 (recipe/similarity.py); the former bf16 path
  is shown to miss that tolerance by an order of magnitude.
* A model cast the way DeepSpeed casts it (parameters bf16, buffers fp32) runs forward, contrastive features
  (fp32, unit norm) and beam search with finite scores.
* Pretraining steps under zero2_bf16 and zero3_bf16 (one process, and two ranks under ZeRO-3) and finetuning
  with its bf16 beam-search evaluation give finite losses.

Broken variants tried: normalize_tokens without the fp32 cast and similarity in the inputs' dtype (the
tolerance test fails: logits off by ~0.5); nn.BatchNorm2d in place of sign_encoder.BatchNorm2d in the ResNet
or in the small CNN (the BatchNorm test, resp. the model test, fails with "expected scalar type BFloat16 but
found Float", what every bf16 run died of).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recipe.contrastive import contrastive_loss, gather_features
from recipe.features import ContrastiveFeatures
from recipe.modeling import SignTranslationModel
from recipe.presets import build_config
from recipe.sign_encoder import BatchNorm2d
from recipe.similarity import _similarity, normalize_tokens
from tests.conftest import launch, read_metrics, run_main, train_args

MAX_LOGIT_SCALE = torch.tensor([math.log(100.0)])
# At scale 100 a logit error of 0.02 is a similarity error of 2e-4; bf16 inputs rounded once (what the
# model's projection hands over) stay well inside it, bf16 normalisation and similarity do not.
LOGIT_TOLERANCE = 0.02
LOSS_TOLERANCE = 2e-3
VOCAB = 40


def trained_like_features(seed: int, batch: int = 16, video_len: int = 30, text_len: int = 16, dim: int = 1024):
    """Projection outputs whose similarities sit near 0.8 (where bf16 rounds coarsely, as in a trained model)
    with positives only slightly above negatives, so the loss is O(1) at scale 100. Width of the large preset."""
    generator = torch.Generator().manual_seed(seed)
    common = 2.0 * torch.randn(1, 1, dim, generator=generator)
    topic = 0.25 * torch.randn(batch, 1, dim, generator=generator)
    video = common + topic + torch.randn(batch, video_len, dim, generator=generator)
    text = common + topic + torch.randn(batch, text_len, dim, generator=generator)
    video_mask = torch.arange(video_len)[None] < torch.randint(video_len // 2, video_len + 1, (batch,), generator=generator)[:, None]
    text_mask = torch.arange(text_len)[None] < torch.randint(3, text_len + 1, (batch,), generator=generator)[:, None]
    return video, video_mask, text, text_mask


def loss_and_logits(features: ContrastiveFeatures, similarity_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(features.batch_size)
    batch = gather_features(features, ids, ids)
    loss = contrastive_loss(batch, MAX_LOGIT_SCALE, similarity_fn=similarity_fn)["loss"]
    from recipe.similarity import similarity

    logits = 100.0 * (similarity_fn or similarity)(features.video, features.video_mask, features.text, features.text_mask)
    return loss.double(), logits.double()


def bf16_similarity(video, video_mask, text, text_mask, kind="token", chunk_size=64):
    """The former path: token similarity computed in bf16."""
    return _similarity(video.bfloat16(), video_mask.bool(), text.bfloat16(), text_mask.bool(), kind, chunk_size)


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_contrastive_loss_agrees_with_fp64_at_the_maximum_logit_scale(seed):
    video, video_mask, text, text_mask = trained_like_features(seed)
    reference = ContrastiveFeatures(normalize_tokens(video.double(), video_mask), video_mask,
                                    normalize_tokens(text.double(), text_mask), text_mask)
    ours = ContrastiveFeatures(normalize_tokens(video.bfloat16(), video_mask), video_mask,
                               normalize_tokens(text.bfloat16(), text_mask), text_mask)
    assert ours.video.dtype == torch.float32 and ours.text.dtype == torch.float32
    ref_loss, ref_logits = loss_and_logits(reference)
    loss, logits = loss_and_logits(ours)
    assert 0.5 < ref_loss < 5.0  # an informative regime: neither solved nor hopeless
    assert (logits - ref_logits).abs().max() < LOGIT_TOLERANCE
    assert (loss - ref_loss).abs() < LOSS_TOLERANCE

    # The former path (bf16 normalisation and similarity) misses the same tolerance by far.
    old = ContrastiveFeatures(F.normalize(video.bfloat16(), dim=-1) * video_mask[..., None], video_mask,
                              F.normalize(text.bfloat16(), dim=-1) * text_mask[..., None], text_mask)
    old_loss, old_logits = loss_and_logits(old, bf16_similarity)
    assert (old_logits - ref_logits).abs().max() > 10 * LOGIT_TOLERANCE
    assert (old_loss - ref_loss).abs() > LOSS_TOLERANCE


def cast_like_deepspeed(model: torch.nn.Module) -> torch.nn.Module:
    """What DeepSpeed 0.19's bf16 mode does to a module: parameters to bf16, buffers left in fp32."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    return model


def tiny_model(**overrides) -> SignTranslationModel:
    torch.manual_seed(0)
    config = build_config("tiny", vocab_size=VOCAB, attn_implementation="sdpa", dropout=0.0, lora_dropout=0.0,
                          **overrides)
    return SignTranslationModel(config)


def test_batchnorm_in_a_bf16_model_matches_fp32():
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(8)
    reference.weight.data.normal_()
    ours = BatchNorm2d(8)
    ours.load_state_dict(reference.state_dict())
    cast_like_deepspeed(ours)
    x = torch.randn(6, 8, 5, 5)
    expected = reference(x)
    got = ours(x.bfloat16())
    assert got.dtype == torch.bfloat16 and ours.running_mean.dtype == torch.float32
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(ours.running_var, reference.running_var, atol=1e-2, rtol=1e-2)
    assert ours.num_batches_tracked.item() == 1
    ours.eval()
    reference.eval()
    torch.testing.assert_close(ours(x.bfloat16()).float(), reference(x), atol=0.05, rtol=0.02)
    # The frame CNNs of every preset run in a bf16 model (base and large: the ResNet-18).
    from recipe.sign_encoder import ResNet18Features, SmallFrameCNN

    for cnn in (ResNet18Features(), SmallFrameCNN((8, 16))):
        features = cast_like_deepspeed(cnn)(torch.randn(2, 3, 32, 32).bfloat16())
        assert features.dtype == torch.bfloat16 and torch.isfinite(features.float()).all()
    # torch's own BatchNorm2d in the same state is what every bf16 run died of:
    plain = cast_like_deepspeed(torch.nn.BatchNorm2d(8))
    with pytest.raises(RuntimeError):
        plain(x.bfloat16())


def test_a_bf16_model_gives_fp32_unit_features_and_finite_beam_search():
    model = cast_like_deepspeed(tiny_model()).eval()
    frames = torch.randn(2, 12, 3, 32, 32).bfloat16()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 7:] = False
    text = torch.tensor([[0, 5, 9, 2, 1], [0, 7, 8, 6, 2]])
    features = model.contrastive_features(frames, mask, text, text != 1)
    assert features.video.dtype == torch.float32 and features.text.dtype == torch.float32
    norms = features.video.norm(dim=-1)[features.video_mask]
    torch.testing.assert_close(norms, torch.ones_like(norms))
    labels = torch.tensor([[0, 5, 9, 12, 2], [0, 7, 7, 30, 2]])
    assert torch.isfinite(model(frames, mask, labels=labels).loss)
    out = model.generate(frames=frames, frame_mask=mask, num_beams=3, max_new_tokens=6, output_scores=True,
                         return_dict_in_generate=True)
    assert out.sequences.shape[0] == 2 and torch.isfinite(out.sequences_scores).all()


# ------------------------------------------------------------------------------ DeepSpeed, bf16 on CPU

def finite_losses(run) -> list[float]:
    records = read_metrics(run)
    losses = [records[step]["loss"] for step in sorted(records)]
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("ds_config", ["zero2_bf16.json", "zero3_bf16.json"])
def test_bf16_pretraining_steps_on_the_cpu_accelerator(ds_config, shards, tmp_path, monkeypatch, one_thread):
    from recipe import pretrain

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    out = tmp_path / "run"
    run_main(pretrain.main, train_args(shards, out, "--max-steps", "3", ds_config=ds_config))
    assert len(finite_losses(out)) == 3
    records = read_metrics(out)
    assert all(math.isfinite(records[3][key]) for key in ("contrastive_loss", "translation_loss"))


@pytest.mark.slow
def test_bf16_finetuning_and_beam_search_on_the_cpu_accelerator(reference_run, tmp_path, monkeypatch, shards, one_thread):
    import json

    from recipe import finetune

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    out = tmp_path / "ft"
    run_main(finetune.main, train_args(shards, out, "--init", str(reference_run), "--max-steps", "2",
                                       "--num-beams", "3", "--max-new-tokens", "8", ds_config="zero2_bf16.json"))
    finite_losses(out)
    report = json.loads((out / "reports" / "test.json").read_text())
    assert report["num_sentences"] == 7 and report["num_beams"] == 3


@pytest.mark.slow
def test_bf16_zero3_on_two_ranks(shards, tmp_path, monkeypatch):
    """The ZeRO-3 bf16 path with real collectives: parameters gathered in bf16, gradients reduced in fp32
    (communication_data_type), fp32 features gathered for the loss."""
    import json

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # the launched ranks inherit it (tests.conftest.launch_env)
    out = tmp_path / "run"
    launch("pretrain.py", train_args(shards, out, "--max-steps", "3", ds_config="zero3_bf16.json"), launcher="torchrun")
    assert len(finite_losses(out)) == 3
    assert json.loads((out / "ds_config.json").read_text())["communication_data_type"] == "fp32"
