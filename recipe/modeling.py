"""The sign translation model: sign encoder + mBART text encoder + mBART decoder, as a Hugging Face model.

    frames, frame_mask --SignEncoder--> visual tokens --------------------------> decoder cross-attention
                                                   \--video_projection--> contrastive video tokens
    text_ids, text_mask --TextEncoder (mBART encoder, frozen)--text_projection--> contrastive text tokens

* `SignTranslationConfig` is a PreTrainedConfig (a typed dataclass in transformers 5), so the model saves
  and loads with `save_pretrained`/`from_pretrained` (safetensors) and is registered with the Auto classes.
* Text encoder and decoder are transformers' own `MBartEncoder`/`MBartDecoder`, named so that weights of
  a local `MBartForConditionalGeneration` directory load by name (`from_mbart`). Like mBART, the token
  embedding is shared by the text encoder, the decoder and the LM head. The visual transformer is an
  `MBartEncoder` too, so `from_mbart` can start it from mBART's encoder (the paper, as GFSLT-VLP).
* `generate` is transformers' (beam search included): `get_encoder()` is the sign encoder, which maps
  (frames, frame_mask) to a `VisualEncoderOutput` carrying the visual token mask, and `forward` uses that
  mask for cross-attention, so beam expansion of inputs is done by `generate` itself.
* LoRA (peft, in place) on the components named in `lora_modules` (the paper: the visual transformer and
  the decoder); `use_lora=False` trains them fully. The frame CNN and temporal convolutions always train fully.
* Special tokens follow the tokenizer's convention (`recipe.tokenizer`): the decoder start token, the
  token `generate` forces first (mBART-50's target language), and which text token is the sentence's
  summary for the `cls` similarity (`text_summary`).
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    GenerationConfig,
    GenerationMixin,
    MBartConfig,
    MBartForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.models.mbart.modeling_mbart import MBartDecoder, MBartEncoder

from recipe.attention import decoder_attn_implementation
from recipe.features import ContrastiveFeatures
from recipe.lora import apply_lora, has_lora, merge_lora
from recipe.sign_encoder import SignEncoder, VisualEncoderOutput
from recipe.similarity import normalize_tokens

logger = logging.getLogger(__name__)

LORA_MODULES = ("visual", "decoder")
"""Components LoRA can adapt: the sign encoder's transformer and the text decoder."""
TEXT_SUMMARIES = ("first", "last")

# transformers 5.24 renamed the decoder's key/value cache from `past_key_values` to `cache` (in generate, in
# MBartDecoder.forward and in the output classes). A model that reads only the old name silently decodes
# every step without its prefix under 5.24, so the cache travels under the name the installed version uses.
CACHE_ARG = "cache" if "cache" in inspect.signature(MBartDecoder.forward).parameters else "past_key_values"


class SignTranslationConfig(PreTrainedConfig):
    """Everything that defines the network. Presets (`recipe.presets`) fill it; training flags do not live here."""

    model_type = "scl_slt"

    vocab_size: int = 1000
    """Rows of the shared token embedding and LM head (the tokenizer's `len()`)."""
    d_model: int = 128
    """Width of every transformer (visual, text encoder, decoder): the decoder cross-attends to visual tokens."""
    projection_dim: int = 128
    """Width of the shared video-text space of the contrastive branch."""

    frame_cnn: str = "small"
    """"resnet18" (torchvision-compatible names) or "small" (tiny preset)."""
    small_cnn_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    """Output channels of the small CNN's stride-2 conv blocks."""
    frame_size: int = 64
    """Square frame side the data pipeline should resize to (the network itself accepts any size)."""
    temporal_kernel_size: int = 5
    subtract_clip_mean: bool = False
    """Feed the frame CNN each clip minus its mean frame (motion, not appearance); tiny preset: on."""
    visual_layers: int = 2
    visual_attention_heads: int = 4
    visual_ffn_dim: int = 256
    max_visual_tokens: int = 256
    """Longest visual token sequence (1 summary token + ~frames/4)."""

    text_encoder_layers: int = 2
    decoder_layers: int = 2
    text_attention_heads: int = 4
    text_ffn_dim: int = 256
    max_position_embeddings: int = 256
    """Longest sentence in tokens."""

    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    scale_embedding: bool = True
    init_std: float = 0.02

    freeze_text_encoder: bool = True
    """The paper freezes the text encoder: it runs without gradients and stays in eval mode."""
    use_lora: bool = True
    """Components in `lora_modules` trained through LoRA adapters; False = all of them trained fully."""
    lora_modules: list[str] = field(default_factory=lambda: list(LORA_MODULES))
    """Which components carry adapters ("visual": the sign encoder's transformer; "decoder"); the paper: both."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Projections adapted in every attention block of the adapted components."""

    label_smoothing: float = 0.0
    """Label smoothing of the translation loss (finetuning uses 0.2)."""
    logit_scale_init: float = math.log(1 / 0.07)

    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 2
    """First decoder token: </s> (ours, mBART-50) or the target language code (mBART-cc25)."""
    forced_bos_token_id: int | None = None
    """Token `generate` forces first: mBART-50's target language code; None otherwise."""
    text_summary: str = "first"
    """Text token read as the sentence by the `cls` similarity: "first" (<s>, mBART-50's language code) or
    "last" (mBART-cc25's closing language code)."""
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def text_mbart_config(self) -> MBartConfig:
        """The MBartConfig of the text encoder and decoder (what a local mBART directory must match)."""
        return MBartConfig(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            encoder_layers=self.text_encoder_layers,
            decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.text_attention_heads,
            decoder_attention_heads=self.text_attention_heads,
            encoder_ffn_dim=self.text_ffn_dim,
            decoder_ffn_dim=self.text_ffn_dim,
            max_position_embeddings=self.max_position_embeddings,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout,
            activation_function=self.activation_function,
            scale_embedding=self.scale_embedding,
            init_std=self.init_std,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            attn_implementation=self._attn_implementation,
        )

    def decoder_mbart_config(self) -> MBartConfig:
        """The text config with the decoder's own attention kernel: never flash (see recipe.attention)."""
        config = self.text_mbart_config()
        config._attn_implementation = decoder_attn_implementation(self._attn_implementation)
        return config

    def visual_mbart_config(self) -> MBartConfig:
        """The MBartConfig of the transformer over visual tokens (embeddings come in, no vocabulary)."""
        return MBartConfig(
            vocab_size=1,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=None,
            forced_eos_token_id=None,
            d_model=self.d_model,
            encoder_layers=self.visual_layers,
            encoder_attention_heads=self.visual_attention_heads,
            encoder_ffn_dim=self.visual_ffn_dim,
            max_position_embeddings=self.max_visual_tokens,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout,
            activation_function=self.activation_function,
            init_std=self.init_std,
            attn_implementation=self._attn_implementation,
        )


def shift_labels_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: [start, y_0, ..., y_{n-2}], with ignored (-100) positions as pad."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class SignTranslationModel(PreTrainedModel, GenerationMixin):
    config_class = SignTranslationConfig
    config: SignTranslationConfig
    main_input_name = "frames"
    base_model_prefix = "scl_slt"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["MBartEncoderLayer", "MBartDecoderLayer"]
    _tied_weights_keys = {
        "lm_head.weight": "decoder.embed_tokens.weight",
        "text_encoder.embed_tokens.weight": "decoder.embed_tokens.weight",
    }

    def __init__(self, config: SignTranslationConfig) -> None:
        super().__init__(config)
        text_config = config.text_mbart_config()
        self.sign_encoder = SignEncoder(
            frame_cnn=config.frame_cnn,
            small_cnn_channels=tuple(config.small_cnn_channels),
            temporal_kernel_size=config.temporal_kernel_size,
            transformer_config=config.visual_mbart_config(),
            subtract_clip_mean=config.subtract_clip_mean,
        )
        self.text_encoder = MBartEncoder(text_config)
        self.decoder = MBartDecoder(config.decoder_mbart_config())
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # mBART checkpoints carry this (zeros); kept so they load by name and logits match mBART's.
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        self.video_projection = nn.Linear(config.d_model, config.projection_dim)
        self.text_projection = nn.Linear(config.d_model, config.projection_dim)
        # Shape [1], not a 0-d scalar: DeepSpeed broadcasts parameters as bytes, which a 0-d tensor cannot be viewed as.
        self.logit_scale = nn.Parameter(torch.full((1,), float(config.logit_scale_init)))
        if config.text_summary not in TEXT_SUMMARIES:
            raise ValueError(f"text_summary must be one of {TEXT_SUMMARIES}, got {config.text_summary!r}")
        self.generation_config = GenerationConfig(
            decoder_start_token_id=config.decoder_start_token_id,
            forced_bos_token_id=config.forced_bos_token_id,
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        )
        self.post_init()
        # After post_init: its weight initialisation would otherwise overwrite LoRA's zero-initialised B.
        if config.freeze_text_encoder:
            self._freeze_text_encoder()
        if config.use_lora:
            self._apply_lora(config.lora_modules)

    def lora_targets(self, modules: list[str]) -> dict[str, nn.Module]:
        """The modules LoRA adapts for each component name (see LORA_MODULES)."""
        unknown = sorted(set(modules) - set(LORA_MODULES))
        if unknown:
            raise ValueError(f"unknown LoRA modules {unknown}; choose from {list(LORA_MODULES)}")
        targets = {"visual": self.sign_encoder.transformer, "decoder": self.decoder}
        return {name: targets[name] for name in LORA_MODULES if name in modules}

    def _apply_lora(self, modules: list[str]) -> None:
        # peft freezes every non-adapter parameter of the module it adapts: the visual transformer's (or the
        # decoder's) own weights, never the frame CNN or the temporal convolutions, which sit outside it.
        config = self.config
        for module in self.lora_targets(modules).values():
            apply_lora(module, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)

    def add_lora(self, modules: list[str], r: int, alpha: int, dropout: float) -> SignTranslationModel:
        """Adapters on `modules` of a model that has none (finetuning after a merged pretraining run)."""
        if has_lora(self):
            raise ValueError("this model already carries LoRA adapters: merge them first (merge_lora)")
        self.config.update(dict(use_lora=bool(modules), lora_modules=list(modules), lora_r=r, lora_alpha=alpha,
                                lora_dropout=dropout))
        if modules:
            self._apply_lora(list(modules))
        return self

    def use_token_convention(self, convention) -> SignTranslationModel:
        """Take a tokenizer's decoder start, forced first token and sentence summary (a `TokenizerConvention`)."""
        self.config.update(dict(decoder_start_token_id=convention.decoder_start_token_id,
                                forced_bos_token_id=convention.forced_bos_token_id,
                                text_summary=convention.text_summary))
        self.generation_config.decoder_start_token_id = convention.decoder_start_token_id
        self.generation_config.forced_bos_token_id = convention.forced_bos_token_id
        return self

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # torchvision's ResNet init
        if isinstance(module, SignEncoder):
            init.normal_(module.summary_token, mean=0.0, std=self.config.init_std)
        if isinstance(module, SignTranslationModel):
            init.constant_(module.logit_scale, float(self.config.logit_scale_init))
            init.zeros_(module.final_logits_bias)

    def _freeze_text_encoder(self) -> None:
        # The token embedding is shared with the decoder and LM head: whether it trains is the decoder's
        # business (frozen under LoRA, trained under full finetuning). The text encoder itself runs under
        # no_grad, so no gradient reaches the embedding through it either way.
        shared = self.text_encoder.embed_tokens.weight
        for parameter in self.text_encoder.parameters():
            if parameter is not shared:
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> SignTranslationModel:
        super().train(mode)
        if self.config.freeze_text_encoder:
            self.text_encoder.eval()  # a frozen feature extractor: no dropout noise in its features
        return self

    # -- Hugging Face plumbing ------------------------------------------------------------------------
    def set_attn_implementation(self, attn_implementation) -> None:
        """transformers' switch (it reaches every sub-model), then the decoder back off flash (recipe.attention)."""
        super().set_attn_implementation(attn_implementation)
        self.decoder.config._attn_implementation = decoder_attn_implementation(self.decoder.config._attn_implementation)

    def get_encoder(self, modality: str | None = None) -> SignEncoder:
        return self.sign_encoder

    def get_decoder(self) -> MBartDecoder:
        return self.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @property
    def max_frames(self) -> int:
        """Most frames per clip the visual positions allow: 1 summary token + floor(floor(T/2)/2) tokens."""
        return 4 * (self.config.max_visual_tokens - 1)

    # -- the three things the recipe calls ---------------------------------------------------------
    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens [B,L,D] (token 0 = clip summary, then ~T/4 tokens) and their mask bool [B,L]."""
        output = self.sign_encoder(frames, frame_mask)
        return output.last_hidden_state, output.attention_mask

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Text encoder hidden states [B,Lt,D] (no gradients when the text encoder is frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            return self.text_encoder(input_ids=text_ids, attention_mask=text_mask).last_hidden_state

    def contrastive_features(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        visual: VisualEncoderOutput | None = None,
    ) -> ContrastiveFeatures:
        """L2-normalised token embeddings of videos and sentences in the shared space.

        Pass `visual` (from `sign_encoder`) to reuse visual tokens already computed for the translation loss.
        """
        if visual is None:
            visual = self.sign_encoder(frames, frame_mask)
        text_mask = text_mask.bool()
        # fp32 from here on, whatever the model computes in (recipe.similarity.normalize_tokens says why).
        video = normalize_tokens(self.video_projection(visual.last_hidden_state), visual.attention_mask)
        text = normalize_tokens(self.text_projection(self.encode_text(text_ids, text_mask)), text_mask)
        if self.config.text_summary == "last":
            text = summary_token_first(text, text_mask)
        return ContrastiveFeatures(video=video, video_mask=visual.attention_mask, text=text, text_mask=text_mask)

    def forward(
        self,
        frames: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: VisualEncoderOutput | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        cache=None,
        num_real_frames: int | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Translation logits; `loss` = label-smoothed cross-entropy when `labels` (-100 = ignore) are given.

        `attention_mask` is the visual token mask; it defaults to the one the sign encoder returns
        (`generate` passes both back in after expanding them for beam search). The decoder's key/value cache
        comes as `cache` (transformers >= 5.24) or `past_key_values` (earlier): see CACHE_ARG.
        `num_real_frames`: see `SignEncoder.forward` (training passes it, so the step never waits for the GPU there).
        """
        cache = cache if cache is not None else past_key_values
        if encoder_outputs is None:
            if frames is None or frame_mask is None:
                raise ValueError("forward needs frames and frame_mask (or encoder_outputs from the sign encoder)")
            encoder_outputs = self.sign_encoder(frames, frame_mask, num_real_frames=num_real_frames)
        if attention_mask is None:
            attention_mask = encoder_outputs.attention_mask
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None:
                decoder_input_ids = shift_labels_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        decoded = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            use_cache=use_cache,
            **{CACHE_ARG: cache},
        )
        logits = self.lm_head(decoded.last_hidden_state) + self.final_logits_bias.to(decoded.last_hidden_state.dtype)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=-100,
                label_smoothing=self.config.label_smoothing,
            )
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            **{CACHE_ARG: getattr(decoded, CACHE_ARG)},
        )

    # -- LoRA and pretrained mBART ----------------------------------------------------------------
    def merge_lora(self) -> SignTranslationModel:
        """Fold every LoRA adapter (visual transformer, decoder) into its base weights; the model and its saved
        config then have none."""
        for module in (self.sign_encoder.transformer, self.decoder):
            if has_lora(module):
                merge_lora(module)
        self.config.use_lora = False
        self.config.lora_modules = []
        return self

    @classmethod
    def from_mbart(cls, mbart_dir: str | Path, config: SignTranslationConfig, init_visual: bool = True,
                   notes: list[str] | None = None) -> SignTranslationModel:
        """A new model started from a local mBART directory (nothing is downloaded).

        From mBART: the text encoder, the decoder, the shared token embedding, the LM head and its logit bias,
        and (`init_visual`, the paper's choice) the visual transformer from mBART's encoder. The sizes of
        those parts are replaced by the checkpoint's; special token ids stay `config`'s (they come from the
        tokenizer) and must agree with the checkpoint's. What could not be taken from mBART is appended to
        `notes` (see `load_visual_from_mbart_encoder`).
        """
        mbart_dir = Path(mbart_dir)
        if not (mbart_dir / "config.json").is_file():
            raise FileNotFoundError(f"{mbart_dir} has no config.json: pass a local MBartForConditionalGeneration directory")
        mbart = MBartForConditionalGeneration.from_pretrained(mbart_dir, local_files_only=True)
        config = adopt_mbart_dimensions(config, mbart.config, visual=init_visual, where=str(mbart_dir))
        model = cls(config)
        state = mbart.state_dict()
        with torch.no_grad():
            _load_strict(model.text_encoder, state, "model.encoder.")
            _load_strict(model.decoder, state, "model.decoder.")
            model.lm_head.weight.copy_(state["lm_head.weight"])
            model.final_logits_bias.copy_(state["final_logits_bias"])
            if init_visual:
                not_copied = load_visual_from_mbart_encoder(model.sign_encoder.transformer, state)
            else:
                not_copied = ["visual transformer: random (--init-visual random)"]
        summary = [f"from {mbart_dir}: text encoder (frozen), decoder, token embedding, LM head"
                   + (", visual transformer (mBART's encoder)" if init_visual else ""),
                   "not from mBART: frame CNN, temporal convolutions, projections, temperature; " + "; ".join(not_copied)]
        logger.info("\n".join(summary))
        if notes is not None:
            notes.extend(summary)
        return model


def summary_token_first(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's last real token moved to position 0, the others shifted right by one (padding stays put).

    mBART-cc25 closes a sentence with its language code, the token that speaks for the sentence (GFSLT-VLP
    reads it there). The `cls` similarity reads position 0; the token and mean similarities do not depend on
    the order of tokens, so moving it changes nothing else. Its place comes from the mask, not from the ids.
    """
    lengths = mask.long().sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
    source = torch.where(positions < lengths, (positions - 1) % lengths, positions)
    return tokens.gather(1, source[..., None].expand_as(tokens))


def _load_strict(module: nn.Module, state: dict, prefix: str) -> None:
    """Load `prefix`-ed checkpoint weights into `module`, whose LoRA-wrapped layers keep theirs under
    `.base_layer.`; every base weight must be there (adapters keep their own initialisation)."""
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    renamed = {k.replace(".base_layer.", "."): k for k in own if ".base_layer." in k}
    sub = {renamed.get(k, k): v for k, v in sub.items()}
    sub.update({k: v for k, v in own.items() if ".lora_" in k})
    result = module.load_state_dict(sub, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"mBART weights under {prefix!r} do not fit: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


@torch.no_grad()
def load_visual_from_mbart_encoder(visual: MBartEncoder, state: dict) -> list[str]:
    """Copy mBART's encoder into the visual transformer (in place); return what was not copied, and why.

    Fits as is: every layer (its sizes were adopted from mBART, `adopt_mbart_dimensions`), the embedding
    layer norm and the final layer norm. Positions: the visual transformer has `max_visual_tokens` + 2 rows
    (mBART's offset of 2 included); the first rows are mBART's, and rows past mBART's own length, if the
    visual sequence is longer, keep their random initialisation. Not copied: the token embedding (visual
    tokens arrive as vectors from the temporal convolutions, so the visual transformer has none, and mBART's
    sqrt(d) embedding scale, a property of that embedding, does not apply to them).
    """
    prefix = "model.encoder."
    encoder = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    not_copied = ["visual token embedding: none (visual tokens come from the temporal convolutions, unscaled), "
                  "so mBART's token embedding and its sqrt(d) scale are not used there",
                  "summary token: new (no mBART counterpart)"]
    mbart_positions = encoder.pop("embed_positions.weight")
    encoder.pop("embed_tokens.weight", None)
    own_positions = visual.embed_positions.weight
    rows = min(own_positions.shape[0], mbart_positions.shape[0])
    own_positions[:rows].copy_(mbart_positions[:rows])
    if rows < own_positions.shape[0]:
        not_copied.append(f"visual positions {rows - 2}..{own_positions.shape[0] - 3}: random (mBART has "
                          f"{mbart_positions.shape[0] - 2} positions)")
    _load_strict(visual, {prefix + k: v for k, v in encoder.items()} | {prefix + "embed_positions.weight": own_positions},
                 prefix)
    return not_copied


def adopt_mbart_dimensions(config: SignTranslationConfig, mbart: MBartConfig, visual: bool = False,
                           where: str = "the mBART checkpoint") -> SignTranslationConfig:
    """Our config with a pretrained mBART's sizes (a new object): text side always, visual transformer if asked.

    Special token ids stay ours (the tokenizer's); <pad> and </s> must be mBART's, or the embedding rows
    would mean other tokens.
    """
    if mbart.encoder_attention_heads != mbart.decoder_attention_heads or mbart.encoder_ffn_dim != mbart.decoder_ffn_dim:
        raise ValueError("this recipe expects an mBART with equal encoder/decoder heads and FFN sizes")
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(config, name) != getattr(mbart, name):
            raise ValueError(f"the tokenizer's {name} is {getattr(config, name)} but {where} has "
                             f"{getattr(mbart, name)}: use the tokenizer that belongs to this mBART")
    values = config.to_dict()
    values.update(
        vocab_size=mbart.vocab_size,
        d_model=mbart.d_model,
        text_encoder_layers=mbart.encoder_layers,
        decoder_layers=mbart.decoder_layers,
        text_attention_heads=mbart.encoder_attention_heads,
        text_ffn_dim=mbart.encoder_ffn_dim,
        max_position_embeddings=mbart.max_position_embeddings,
        activation_function=mbart.activation_function,
        scale_embedding=mbart.scale_embedding,
    )
    if visual:
        values.update(visual_layers=mbart.encoder_layers, visual_attention_heads=mbart.encoder_attention_heads,
                      visual_ffn_dim=mbart.encoder_ffn_dim)
    for key in ("model_type", "transformers_version", "architectures"):
        values.pop(key, None)
    adopted = SignTranslationConfig(**values)
    adopted._attn_implementation = config._attn_implementation
    return adopted


AutoConfig.register(SignTranslationConfig.model_type, SignTranslationConfig, exist_ok=True)
AutoModel.register(SignTranslationConfig, SignTranslationModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(SignTranslationConfig, SignTranslationModel, exist_ok=True)
