"""The sign translation model on CPU: masking, attention kernels, LoRA, save/load, generate, presets.

Which kernel each module gets (flash, sdpa) is tested in tests/test_attention.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from recipe.lora import count_parameters
from recipe.modeling import SignTranslationConfig, SignTranslationModel
from recipe.presets import MBART_LARGE_50_VOCAB_SIZE, PRESETS, build_config
from recipe.sign_encoder import ResNet18Features, SignEncoder, SmallFrameCNN

VOCAB = 40
# torchvision's resnet18 has 11,689,512 parameters; its classifier fc (512*1000 + 1000) is dropped.
RESNET18_WITHOUT_FC = 11_689_512 - 513_000


def tiny(**overrides) -> SignTranslationModel:
    torch.manual_seed(0)
    overrides = {"attn_implementation": "eager", "dropout": 0.0, "lora_dropout": 0.0, **overrides}
    return SignTranslationModel(build_config("tiny", vocab_size=VOCAB, **overrides))


def randomize_lora(model: SignTranslationModel) -> None:
    """LoRA's B starts at zero (adapters are a no-op); make them matter, as after training."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)


def clips(lengths, total, size=32, seed=0, pad_value=0.0):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(len(lengths), max(lengths), 3, size, size, generator=generator)
    padded = torch.full((len(lengths), total, 3, size, size), pad_value)
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for i, n in enumerate(lengths):
        padded[i, :n] = frames[i, :n]
        mask[i, :n] = True
    return padded, mask


LABELS = torch.tensor([[0, 5, 9, 12, 2, -100], [0, 7, 7, 30, 21, 2]])


def test_padding_frames_never_change_outputs_train_mode():
    """Train mode (BatchNorm on batch statistics): more padding, filled with garbage, changes nothing."""
    model = tiny()
    model.train()
    short, short_mask = clips([21, 32], total=32)  # odd length exercises the pooling floor
    long, long_mask = clips([21, 32], total=45, pad_value=7.0)
    long[:, 32:] = torch.randn_like(long[:, 32:]) * 5
    long[0, 21:32] = 3.0  # garbage inside the batch's span too
    tokens_a, mask_a = model.encode_video(short, short_mask)
    tokens_b, mask_b = model.encode_video(long, long_mask)
    assert mask_a.sum(1).tolist() == [1 + 21 // 4, 1 + 32 // 4]
    assert torch.equal(mask_a, mask_b[:, : mask_a.shape[1]]) and not mask_b[:, mask_a.shape[1] :].any()
    torch.testing.assert_close(tokens_a[mask_a], tokens_b[mask_b])
    out_a, out_b = model(short, short_mask, labels=LABELS), model(long, long_mask, labels=LABELS)
    torch.testing.assert_close(out_a.logits, out_b.logits)
    torch.testing.assert_close(out_a.loss, out_b.loss)


def test_temporal_batchnorm_equals_torchs_on_the_real_time_steps_alone():
    """The temporal blocks' BatchNorm (the paper's Conv1D/BN/ReLU) computes what nn.BatchNorm1d computes on the
    real time steps packed together: outputs, running statistics, then eval mode; padding comes out as zeros.
    (Broken variant tried: statistics over every position, padding included: outputs and statistics differ.)"""
    from recipe.sign_encoder import MaskedBatchNorm1d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 9, generator=gen) * 2 + 1
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for row, length in enumerate((9, 4, 6)):
        mask[row, :length] = True
    x[~mask[:, None, :].expand_as(x)] = 50.0  # garbage in the padding
    masked, reference = MaskedBatchNorm1d(6), nn.BatchNorm1d(6)
    with torch.no_grad():
        masked.weight.copy_(torch.linspace(0.5, 2, 6)), masked.bias.copy_(torch.linspace(-1, 1, 6))
    reference.load_state_dict(masked.state_dict())
    packed = x.transpose(1, 2)[mask]  # [real steps, C]
    for _ in range(3):  # running statistics accumulate like torch's
        out = masked(x, mask)
        expected = reference(packed)
        torch.testing.assert_close(out.transpose(1, 2)[mask], expected)
        assert torch.equal(out.transpose(1, 2)[~mask], torch.zeros_like(out.transpose(1, 2)[~mask]))
    torch.testing.assert_close(masked.running_mean, reference.running_mean)
    torch.testing.assert_close(masked.running_var, reference.running_var)
    assert masked.num_batches_tracked == reference.num_batches_tracked == 3
    masked.eval(), reference.eval()
    torch.testing.assert_close(masked(x, mask).transpose(1, 2)[mask], reference(packed))
    half = masked(x.bfloat16(), mask)  # a bf16 model: fp32 arithmetic, bf16 out
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float().transpose(1, 2)[mask], reference(packed), atol=0.05, rtol=0.02)


def test_padded_clip_equals_clip_alone_eval_mode():
    model = tiny().eval()
    batch, mask = clips([21, 32], total=32)
    alone = batch[:1, :21]
    tokens, token_mask = model.encode_video(batch, mask)
    tokens_alone, mask_alone = model.encode_video(alone, torch.ones(1, 21, dtype=torch.bool))
    assert mask_alone.all() and mask_alone.shape[1] == token_mask[0].sum()
    torch.testing.assert_close(tokens[0, token_mask[0]], tokens_alone[0])
    logits = model(batch, mask, labels=LABELS).logits
    logits_alone = model(alone, torch.ones(1, 21, dtype=torch.bool), labels=LABELS[:1]).logits
    torch.testing.assert_close(logits[:1], logits_alone)


def test_eager_and_sdpa_agree():
    eager = tiny(attn_implementation="eager").eval()
    sdpa = tiny(attn_implementation="sdpa").eval()
    assert sdpa.decoder.config._attn_implementation == "sdpa"
    assert sdpa.sign_encoder.transformer.config._attn_implementation == "sdpa"
    randomize_lora(eager)
    sdpa.load_state_dict(eager.state_dict())
    frames, mask = clips([21, 32], total=32)
    text = torch.tensor([[0, 5, 9, 2, 1], [0, 7, 8, 6, 2]])
    torch.testing.assert_close(
        eager(frames, mask, labels=LABELS).logits, sdpa(frames, mask, labels=LABELS).logits, rtol=1e-4, atol=1e-5
    )
    a = eager.contrastive_features(frames, mask, text, text != 1)
    b = sdpa.contrastive_features(frames, mask, text, text != 1)
    torch.testing.assert_close(a.text[a.text_mask], b.text[b.text_mask], rtol=1e-4, atol=1e-5)


def test_contrastive_features_and_frozen_text_encoder():
    model = tiny().train()
    frames, mask = clips([21, 32], total=32)
    text = torch.tensor([[0, 5, 9, 2, 1], [0, 7, 8, 6, 2]])
    features = model.contrastive_features(frames, mask, text, text != 1)
    assert features.video.shape == (2, 1 + 32 // 4, model.config.projection_dim)
    assert features.text.shape == (2, 5, model.config.projection_dim)
    torch.testing.assert_close(features.video.norm(dim=-1), features.video_mask.float())
    torch.testing.assert_close(features.text.norm(dim=-1), features.text_mask.float())
    assert features.text_mask.tolist() == [[True] * 4 + [False], [True] * 5]
    assert not model.text_encoder.training, "a frozen text encoder stays in eval mode"
    (features.video.sum() + features.text.sum()).backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.text_projection.weight.grad is not None and model.video_projection.weight.grad is not None
    assert model.sign_encoder.frame_cnn.layers[0].weight.grad is not None


def lora_parameter_count(config: SignTranslationConfig, modules=None) -> int:
    """q_proj and v_proj of every attention block of the adapted components; A is r x d, B is d x r: the
    decoder has self- and cross-attention per layer, the visual transformer self-attention only."""
    modules = config.lora_modules if modules is None else modules
    per_projection = 2 * config.lora_r * config.d_model
    blocks = (config.decoder_layers * 2 if "decoder" in modules else 0) + (config.visual_layers if "visual" in modules else 0)
    return blocks * len(config.lora_target_modules) * per_projection


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_on_visual_transformer_and_decoder_the_paper_default():
    """LoRA adapts the visual transformer and the decoder (r 16, alpha 32); the frame CNN, the temporal
    convolutions and the summary token train fully; the text encoder is frozen. (Broken variant tried:
    adapters on the decoder only, the previous default: the visual counts and names fail.)"""
    lora = tiny()
    full = tiny(use_lora=False)
    config = lora.config
    assert config.lora_modules == ["visual", "decoder"] and (config.lora_r, config.lora_alpha) == (16, 32)
    assert count_parameters(lora) == count_parameters(full) + lora_parameter_count(config)
    trainable = trainable_names(lora)
    visual_transformer = {n for n in trainable if n.startswith("sign_encoder.transformer.")}
    assert visual_transformer and all(".lora_" in n for n in visual_transformer)
    assert all(".lora_" in n for n in trainable if n.startswith("decoder."))
    assert not any(n.startswith("text_encoder.") for n in trainable)
    for name, parameter in lora.named_parameters():
        if name.startswith(("sign_encoder.frame_cnn.", "sign_encoder.temporal.", "sign_encoder.summary_token")):
            assert parameter.requires_grad, name
    frozen_text = count_parameters(full.text_encoder) - config.vocab_size * config.d_model  # shared embedding
    assert count_parameters(full, trainable_only=True) == count_parameters(full) - frozen_text
    frozen_by_lora = count_parameters(full.decoder) + count_parameters(full.sign_encoder.transformer)  # decoder incl. embedding
    assert count_parameters(lora, trainable_only=True) == (count_parameters(full) - frozen_text - frozen_by_lora
                                                           + lora_parameter_count(config))
    assert not lora.lm_head.weight.requires_grad and full.lm_head.weight.requires_grad
    wider = tiny(lora_r=4, lora_target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    assert count_parameters(wider) - count_parameters(full) == lora_parameter_count(wider.config)


@pytest.mark.parametrize("modules", [["decoder"], ["visual"], []])
def test_lora_per_component(modules):
    model = tiny(lora_modules=modules)
    full = tiny(use_lora=False)
    assert count_parameters(model) == count_parameters(full) + lora_parameter_count(model.config)
    trainable = trainable_names(model)
    for component, prefix in (("visual", "sign_encoder.transformer."), ("decoder", "decoder.")):
        names = {n for n in trainable if n.startswith(prefix)}
        if component in modules:
            assert names and all(".lora_" in n for n in names), component
        else:
            assert names == {n for n in trainable_names(full) if n.startswith(prefix)}, component


def test_gradients_reach_the_frame_cnn_and_temporal_convolutions_under_visual_lora():
    model = tiny().train()
    randomize_lora(model)
    frames, mask = clips([21, 32], total=32)
    model(frames, mask, labels=LABELS).loss.backward()
    assert model.sign_encoder.frame_cnn.layers[0].weight.grad.abs().sum() > 0
    assert model.sign_encoder.temporal[0].conv.weight.grad.abs().sum() > 0
    q_proj = model.sign_encoder.transformer.layers[0].self_attn.q_proj
    assert q_proj.lora_A["default"].weight.grad.abs().sum() > 0 and q_proj.base_layer.weight.grad is None


def test_unknown_lora_module_is_refused():
    with pytest.raises(ValueError, match="unknown LoRA modules"):
        tiny(lora_modules=["decoder", "text"])


def test_merge_lora_keeps_outputs():
    """Adapters in both places are merged (broken variant tried: merging the decoder only)."""
    model = tiny().eval()
    randomize_lora(model)
    frames, mask = clips([21, 32], total=32)
    before = model(frames, mask, labels=LABELS).logits
    model.merge_lora()
    assert model.config.use_lora is False and model.config.lora_modules == []
    assert not any("lora_" in n or "base_layer" in n for n in model.state_dict())
    assert count_parameters(model) == count_parameters(tiny(use_lora=False))
    torch.testing.assert_close(model(frames, mask, labels=LABELS).logits, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("merge", [False, True], ids=["with-lora", "merged"])
def test_save_load_identical_logits(tmp_path, merge):
    model = tiny().eval()
    randomize_lora(model)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
        model.final_logits_bias.normal_()
    if merge:
        model.merge_lora()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "scl_slt"
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert isinstance(loaded, SignTranslationModel) and loaded.config.use_lora is (not merge)
    assert isinstance(AutoModel.from_pretrained(tmp_path), SignTranslationModel)
    frames, mask = clips([21, 32], total=32)
    assert torch.equal(loaded(frames, mask, labels=LABELS).logits, model(frames, mask, labels=LABELS).logits)
    assert loaded.logit_scale.item() == 3.0
    assert loaded.lm_head.weight is loaded.decoder.embed_tokens.weight


def sequence_log_prob(model, frames, mask, sequences, eos_id):
    """Sum of token log-probabilities of generated sequences (up to and including </s>), recomputed."""
    logits = model(frames, mask, decoder_input_ids=sequences[:, :-1]).logits
    log_probs = logits.log_softmax(-1).gather(-1, sequences[:, 1:, None])[..., 0]
    finished_before = torch.cumsum(sequences[:, 1:] == eos_id, dim=1) - (sequences[:, 1:] == eos_id).long()
    return (log_probs * (finished_before == 0)).sum(-1)


def test_generate_beam_search():
    model = tiny().eval()
    randomize_lora(model)
    with torch.no_grad():  # an untrained model would end at once; make </s> unlikely so beams grow
        model.final_logits_bias[0, model.config.eos_token_id] = -3.0
    frames, mask = clips([21, 32], total=32)
    kwargs = dict(frames=frames, frame_mask=mask, max_new_tokens=6, return_dict_in_generate=True, length_penalty=0.0)
    beam = model.generate(num_beams=4, output_scores=True, **kwargs)
    greedy = model.generate(num_beams=1, output_scores=True, **kwargs)
    sequences = beam.sequences
    assert sequences.shape[0] == 2 and 2 < sequences.shape[1] <= 7
    assert (sequences[:, 0] == model.config.decoder_start_token_id).all()
    recomputed = sequence_log_prob(model, frames, mask, sequences, model.config.eos_token_id)
    torch.testing.assert_close(beam.sequences_scores, recomputed, rtol=1e-4, atol=1e-4)
    greedy_score = sequence_log_prob(model, frames, mask, greedy.sequences, model.config.eos_token_id)
    assert (beam.sequences_scores >= greedy_score - 1e-5).all()
    alone = model.generate(frames=frames[:1, :21], frame_mask=mask[:1, :21], num_beams=4, max_new_tokens=6, length_penalty=0.0)
    assert torch.equal(alone[0, : sequences.shape[1]], sequences[0, : alone.shape[1]])


# -- presets ----------------------------------------------------------------------------------------
def small_cnn_params(channels):
    total, previous = 0, 3
    for c in channels:
        total += 9 * previous * c + 2 * c
        previous = c
    return total


def expected_parameter_count(config: SignTranslationConfig) -> int:
    """Count from the architecture description, independently of the code that builds it."""
    d, k = config.d_model, config.temporal_kernel_size

    def attention():
        return 4 * (d * d + d)

    def ffn(f):
        return d * f + f + f * d + d

    encoder_layer = lambda f: attention() + ffn(f) + 2 * 2 * d  # noqa: E731
    decoder_layer = attention() * 2 + ffn(config.text_ffn_dim) + 3 * 2 * d
    stack_norms = 2 * 2 * d  # layernorm_embedding + final layer_norm
    if config.frame_cnn == "resnet18":
        cnn, cnn_dim = RESNET18_WITHOUT_FC, 512
    else:
        # the small CNN hands a flattened 2 x 2 grid of its last channels to the temporal module
        cnn, cnn_dim = small_cnn_params(config.small_cnn_channels), config.small_cnn_channels[-1] * SmallFrameCNN.GRID**2
    temporal = cnn_dim * d * k + d * d * k + 2 * (2 * d)  # two convs (no bias: BN shifts), two BatchNorms
    visual = (config.max_visual_tokens + 2) * d + config.visual_layers * encoder_layer(config.visual_ffn_dim) + stack_norms
    text_positions = (config.max_position_embeddings + 2) * d
    text_encoder = text_positions + config.text_encoder_layers * encoder_layer(config.text_ffn_dim) + stack_norms
    decoder = text_positions + config.decoder_layers * decoder_layer + stack_norms
    shared_embedding = config.vocab_size * d  # text encoder, decoder and LM head share it
    projections = 2 * (d * config.projection_dim + config.projection_dim)
    lora = lora_parameter_count(config) if config.use_lora else 0  # visual transformer + decoder by default
    return cnn + temporal + d + visual + text_encoder + decoder + shared_embedding + projections + 1 + lora


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_with_expected_parameter_count(preset):
    if preset == "large":
        config = build_config("large")
        assert config.vocab_size == MBART_LARGE_50_VOCAB_SIZE
        with torch.device("meta"):
            model = SignTranslationModel(config)
    else:
        config = build_config(preset, vocab_size=1000)
        model = SignTranslationModel(config)
    assert count_parameters(model) == expected_parameter_count(config)
    if preset == "large":  # mBART-large-50 is ~611M; add the sign encoder's ~170M, minus nothing shared
        assert 750e6 < count_parameters(model) < 800e6


def test_presets_reject_bad_input():
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("huge", vocab_size=10)
    with pytest.raises(ValueError, match="needs vocab_size"):
        build_config("tiny")
    with pytest.raises(ValueError, match="unknown config fields"):
        build_config("tiny", vocab_size=10, d_modle=64)


def test_resnet18_has_torchvision_names_and_loads_weights(tmp_path):
    resnet = ResNet18Features()
    names = list(resnet.state_dict())
    for name in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                 "layer2.0.downsample.1.bias", "layer4.1.bn2.num_batches_tracked"]:
        assert name in names
    assert count_parameters(resnet) == RESNET18_WITHOUT_FC
    # A torchvision checkpoint: our keys plus the classifier, saved with torch.save.
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in resnet.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    model = SignTranslationModel(build_config("base", vocab_size=50, visual_layers=1, text_encoder_layers=1, decoder_layers=1))
    model.sign_encoder.load_resnet18_weights(tmp_path / "resnet18.pth")
    assert torch.equal(model.sign_encoder.frame_cnn.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="not a torchvision resnet18"):
        model.sign_encoder.load_resnet18_weights(tmp_path / "broken.pth")


def test_sign_encoder_rejects_bad_shapes():
    encoder: SignEncoder = tiny().sign_encoder
    with pytest.raises(ValueError, match="expected frames"):
        encoder(torch.zeros(2, 8, 3, 64), torch.ones(2, 8, dtype=torch.bool))


def test_too_many_frames_is_a_clear_error():
    model = tiny(max_visual_tokens=8)
    frames, mask = clips([40], total=40, size=16)
    with pytest.raises(ValueError, match="max_visual_tokens"):
        model.encode_video(frames, mask)


def test_gradient_checkpointing_gives_same_gradients():
    frames, mask = clips([21, 32], total=32)
    grads = []
    for checkpointing in (False, True):
        model = tiny(use_lora=False, freeze_text_encoder=False).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.decoder.layers[0].gradient_checkpointing and model.sign_encoder.transformer.layers[0].gradient_checkpointing
        model(frames, mask, labels=LABELS).loss.backward()
        grads.append(model.decoder.layers[0].fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_clip_mean_subtraction_removes_what_stays_still():
    """Two clips that differ only in a static background give the same input to the frame CNN."""
    from recipe.sign_encoder import subtract_clip_mean

    generator = torch.Generator().manual_seed(0)
    motion = torch.randn(1, 6, 3, 8, 8, generator=generator)
    mask = torch.tensor([[True] * 5 + [False]])
    background_a, background_b = torch.rand(1, 1, 3, 8, 8, generator=generator), torch.rand(1, 1, 3, 8, 8, generator=generator)
    a = subtract_clip_mean(motion + background_a, mask)
    b = subtract_clip_mean(motion + background_b, mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(a[:, 5], torch.zeros_like(a[:, 5]))  # padding stays zero
    assert torch.allclose(a[:, :5].mean(1), torch.zeros(1, 3, 8, 8), atol=1e-6)


def test_text_summary_last_moves_the_closing_token_to_position_zero_and_changes_only_cls():
    """mBART-cc25 sentences end in their language code: with text_summary="last" the `cls` similarity reads
    that token (found from the mask, whatever the length), and the token and mean similarities are unchanged.
    (Broken variant tried: reading position 0 regardless, i.e. the first word piece.)"""
    from recipe.similarity import similarity

    first = tiny().eval()
    last = tiny(text_summary="last").eval()
    last.load_state_dict(first.state_dict())
    frames, mask = clips([21, 32], total=32)
    text = torch.tensor([[5, 9, 2, 30, 1, 1], [7, 8, 6, 11, 2, 30]])  # pieces </s> lang_code, padded
    a = first.contrastive_features(frames, mask, text, text != 1)
    b = last.contrastive_features(frames, mask, text, text != 1)
    torch.testing.assert_close(b.text[:, 0], a.text[[0, 1], [3, 5]])  # the language code's features
    assert torch.equal(b.text_mask, a.text_mask) and torch.equal(b.text[0, 4:], a.text[0, 4:])  # padding stays
    for kind in ("token", "mean"):
        torch.testing.assert_close(similarity(a.video, a.video_mask, b.text, b.text_mask, kind),
                                   similarity(a.video, a.video_mask, a.text, a.text_mask, kind))
    assert not torch.allclose(similarity(a.video, a.video_mask, b.text, b.text_mask, "cls"),
                              similarity(a.video, a.video_mask, a.text, a.text_mask, "cls"))


def test_generation_forces_the_target_language_first():
    """mBART-50: decoding starts from </s> and the target language code is forced as the first generated
    token, from the model's own generation config (no flag at the call)."""
    model = tiny(forced_bos_token_id=17).eval()
    frames, mask = clips([21, 32], total=32)
    generated = model.generate(frames=frames, frame_mask=mask, num_beams=2, max_new_tokens=4)
    assert generated[:, 0].tolist() == [2, 2] and generated[:, 1].tolist() == [17, 17]
    assert tiny().generate(frames=frames, frame_mask=mask, num_beams=2, max_new_tokens=4)[:, 1].tolist() != [17, 17]
