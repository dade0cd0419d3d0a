"""The visual side of the model: sign video frames -> a short sequence of visual tokens.

    frames [B,T,3,H,W] --frame CNN (real frames only)--> [B,T,C]
        --temporal module (2 x Conv1d k=5 + BatchNorm + ReLU + MaxPool 2, ~4x shorter)--> [B,T/4,D]
        --prepend a learned summary token--> --mBART-style transformer encoder--> [B,1+T/4,D]

Padding frames never influence real outputs: the CNN sees only real frames (so BatchNorm statistics
in train mode come from real frames alone), padded time steps are zeroed before every temporal
convolution (exactly what a shorter, unpadded clip sees as conv padding), the temporal BatchNorm counts
real time steps only, a pooled step is valid only if both of its inputs were, and the transformer masks
padded tokens out of attention.

The ResNet-18 keeps torchvision's parameter names (conv1, bn1, layer1.0.conv1, ...) so ImageNet weights
saved from torchvision load with `load_resnet18_weights` (torchvision itself does not import beside the
torch we pin, so the network is written out here).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
from torch import nn
from transformers import MBartConfig
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.mbart.modeling_mbart import MBartEncoder

RESNET18_FEATURE_DIM = 512


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same names, same arithmetic) that also runs inside a bf16/fp16 model.

    DeepSpeed (0.19) casts parameters to the training dtype and leaves buffers in fp32, and torch's batch
    norm takes a half-precision input only with weight, bias and running statistics all in fp32 (cuDNN's
    mixed mode) or all in the input's dtype: a bf16 model with fp32 running statistics fails at its first
    forward. Here the affine parameters are used in fp32 and the statistics are kept in fp32 (accumulating
    them in bf16 would round every update to 8 bits). In fp32 this is nn.BatchNorm2d's own forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.bfloat16, torch.float16):
            return super().forward(x)
        if not self.track_running_stats or self.momentum is None:
            raise ValueError("BatchNorm2d in half precision supports tracked statistics with a fixed momentum only")
        for name in ("running_mean", "running_var"):
            if getattr(self, name).dtype != torch.float32:  # a DeepSpeed that cast buffers too
                setattr(self, name, getattr(self, name).float())
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight.float(), self.bias.float(),
                            self.training, self.momentum, self.eps)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same attribute names, same arithmetic)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Features(nn.Module):
    """ResNet-18 without its classifier: images [N,3,H,W] -> pooled features [N,512]."""

    feature_dim = RESNET18_FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128, 1))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256, 1))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class SmallFrameCNN(nn.Module):
    """The tiny preset's frame network: stride-2 conv + BatchNorm + ReLU blocks, then a coarse spatial grid.

    The last feature map is pooled to a fixed 2 x 2 grid and flattened, not averaged to one vector: where
    the hands are relative to the body is much of what a sign is, and a global average throws it away
    (on small frames the hand is a few pixels, and position is most of the signal).
    """

    GRID = 2

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.feature_dim = in_channels * self.GRID * self.GRID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(x), self.GRID).flatten(1)


def build_frame_cnn(kind: str, small_channels: tuple[int, ...]) -> nn.Module:
    if kind == "resnet18":
        return ResNet18Features()
    if kind == "small":
        return SmallFrameCNN(tuple(small_channels))
    raise ValueError(f"unknown frame_cnn {kind!r}; use 'resnet18' or 'small'")


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d over [B, C, T] whose batch statistics count the real time steps only.

    torch's batch norm averages over every position, padding included, so a clip's output would depend on how
    much padding its batch needed. Here mean and variance are masked sums (no boolean indexing, so no wait for
    the GPU), the running statistics follow nn.BatchNorm1d's update (momentum, unbiased variance), and the
    arithmetic is fp32 whatever the model's precision (statistics accumulated in bf16 would round every update;
    see BatchNorm2d). Padded positions come out as zeros. Same parameter and buffer names as nn.BatchNorm1d.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.track_running_stats or self.momentum is None:
            raise ValueError("MaskedBatchNorm1d supports tracked statistics with a fixed momentum only")
        real = mask[:, None, :].to(torch.float32)
        values = x.float()
        if self.training:
            count = real.sum()
            mean = (values * real).sum((0, 2)) / count.clamp(min=1)
            var = (((values - mean[None, :, None]) ** 2) * real).sum((0, 2)) / count.clamp(min=1)
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased.to(self.running_var.dtype))
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean.float(), self.running_var.float()
        normed = (values - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        out = normed * self.weight.float()[None, :, None] + self.bias.float()[None, :, None]
        return (out * real).to(x.dtype)


class TemporalBlock(nn.Module):
    """Conv1d(k) + BatchNorm1d + ReLU + MaxPool1d(2) over time (GFSLT-VLP's TemporalConv block, the paper's
    "Conv1D/BN/ReLU"), with the padding mask carried along."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"temporal kernel_size must be odd to keep frames centred, got {kernel_size}")
        # No conv bias: BatchNorm subtracts it again, so its gradient is zero up to rounding, and Adam turns
        # that rounding into full-size steps (ZeRO-2 and ZeRO-3 runs drifted apart on it); BN's own shift
        # is the bias.
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = MaskedBatchNorm1d(out_channels)
        self.pool = nn.MaxPool1d(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x [B,C,T]; zeroed padding = what an unpadded clip sees as the conv's own zero padding.
        x = x * mask[:, None, :].to(x.dtype)
        x = self.pool(F.relu(self.norm(self.conv(x), mask)))
        # A pooled step is real only if both inputs were: an odd-length clip alone drops its last
        # frame (floor), so the padded batch must drop it too.
        usable = mask[:, : 2 * x.shape[-1]]
        return x, usable[:, 0::2] & usable[:, 1::2]


def subtract_clip_mean(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Each clip minus its own mean frame (over its real frames only, so padding changes nothing).

    What stays still in a sign video (background, clothes, body, face) carries no meaning; what moves (the
    hands) carries the words. A frame CNN trained from scratch on a few thousand clips spends a long time
    learning to ignore the still part first; removing it up front is what lets the tiny preset learn in
    minutes (on the synthetic corpus: dev BLEU-4 ~3 -> ~24 after 1,000 steps of translation training).
    Off for ImageNet-initialised ResNets, which expect natural images.
    """
    weights = frame_mask[:, :, None, None, None].to(frames.dtype)
    mean = (frames * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1.0)
    return (frames - mean) * weights


@dataclass
class VisualEncoderOutput(BaseModelOutput):
    """BaseModelOutput plus the token mask, so `generate` expands it with the tokens for beam search."""

    attention_mask: torch.Tensor | None = None


class SignEncoder(nn.Module):
    """frames [B,T,3,H,W] + frame_mask [B,T] -> visual tokens [B,L,D] + token mask [B,L]."""

    main_input_name = "frames"

    def __init__(
        self,
        frame_cnn: str,
        small_cnn_channels: tuple[int, ...],
        temporal_kernel_size: int,
        transformer_config: MBartConfig,
        subtract_clip_mean: bool = False,
    ) -> None:
        super().__init__()
        self.subtract_clip_mean = subtract_clip_mean
        d_model = transformer_config.d_model
        self.frame_cnn = build_frame_cnn(frame_cnn, small_cnn_channels)
        self.temporal = nn.ModuleList(
            [
                TemporalBlock(self.frame_cnn.feature_dim, d_model, temporal_kernel_size),
                TemporalBlock(d_model, d_model, temporal_kernel_size),
            ]
        )
        # Token 0 summarises the clip (the "cls" similarity uses it; the decoder attends to it too).
        self.summary_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.transformer = MBartEncoder(transformer_config)
        # Visual tokens arrive as embeddings; a word-embedding table here would be dead weight.
        self.transformer.embed_tokens = None

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor, num_real_frames: int | None = None,
                **unused) -> VisualEncoderOutput:
        """`num_real_frames` = frame_mask.sum(), counted on the host from the batch's CPU mask: the real frames are
        then picked without waiting for the GPU (a boolean index must first learn how many there are). Without
        it (generate, inference) they are picked by boolean indexing."""
        # `generate` passes output_attentions/return_dict etc.; the visual encoder has nothing to add.
        if frames.dim() != 5 or frame_mask.shape != frames.shape[:2]:
            raise ValueError(
                f"expected frames [B,T,3,H,W] and frame_mask [B,T], got {tuple(frames.shape)} and {tuple(frame_mask.shape)}"
            )
        frame_mask = frame_mask.bool()
        batch, time = frame_mask.shape
        if self.subtract_clip_mean:
            frames = subtract_clip_mean(frames, frame_mask)
        # Only real frames reach the CNN: padding never reaches BatchNorm.
        flat_mask = frame_mask.flatten()
        if num_real_frames is None:
            positions = flat_mask.nonzero().squeeze(1)
        else:
            positions = torch.nonzero_static(flat_mask, size=num_real_frames).squeeze(1)
        real = self.frame_cnn(frames.flatten(0, 1).index_select(0, positions))
        per_frame = real.new_zeros(batch * time, real.shape[-1]).index_copy(0, positions, real).view(batch, time, -1)
        x, mask = per_frame.transpose(1, 2), frame_mask
        for block in self.temporal:
            x, mask = block(x, mask)
        tokens = torch.cat([self.summary_token.expand(batch, -1, -1).to(x.dtype), x.transpose(1, 2)], dim=1)
        if tokens.shape[1] > self.transformer.max_source_positions:
            raise ValueError(
                f"{time} frames give {tokens.shape[1]} visual tokens, more than max_visual_tokens="
                f"{self.transformer.max_source_positions}: cap frames per clip (--max-frames) or raise max_visual_tokens"
            )
        mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        hidden = self.transformer(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        hidden = hidden * mask[..., None].to(hidden.dtype)  # padded tokens carry nothing, deterministically
        return VisualEncoderOutput(last_hidden_state=hidden, attention_mask=mask)

    def load_resnet18_weights(self, path: str | Path) -> None:
        """Load torchvision resnet18 weights (`.pth` state dict or `.safetensors`) from a local file.

        The classifier (`fc.*`) is dropped; every other key must match exactly.
        """
        if not isinstance(self.frame_cnn, ResNet18Features):
            raise ValueError("this model's frame CNN is not a ResNet-18 (preset tiny uses the small CNN)")
        path = Path(path)
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = self.frame_cnn.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path} is not a torchvision resnet18 state dict: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
