"""Restormer (Zamir et al., CVPR 2022), read top to bottom like the paper.

A U-shaped encoder-decoder of Transformer blocks that work on the whole image. Each block has
multi-Dconv head transposed attention (MDTA: attention across channels, not pixels, so its cost
grows linearly with the image) and a gated-Dconv feed-forward network (GDFN). Module and
parameter names follow the authors' ``restormer_arch.py``, so their released checkpoints
(``{'params': state_dict}``) load strictly and ours load into their code.

The authors' network takes images in [0, 1]. This project hands every model images in
[0, rgb_range]; ``RestormerConfig.rgb_range`` is the one place where the two meet (1 gives the
authors' network exactly). The input is reflect-padded to a multiple of 8 and the output cropped
back, as the authors' test scripts do, so any image size works.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYERNORM_TYPES = ("WithBias", "BiasFree")
LAYERNORM_EPS = 1e-5
SIZE_MULTIPLE = 8  # three 2x downsamplings: sides must divide by 2^3
LEVELS = 4


@dataclass
class RestormerConfig:
    """Everything that shapes the network; the defaults are the authors' released models."""

    dim: int = 48
    num_blocks: list[int] = field(default_factory=lambda: [4, 6, 6, 8])
    num_refinement_blocks: int = 4
    heads: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"
    inp_channels: int = 3
    out_channels: int = 3
    rgb_range: float = 1.0  # the value range of forward's input and output
    task_names: list[str] = field(default_factory=lambda: ["denoise30"])

    def __post_init__(self):
        if self.layernorm_type not in LAYERNORM_TYPES:
            raise ValueError(f"layernorm_type must be one of {LAYERNORM_TYPES}, got {self.layernorm_type!r}")
        if len(self.num_blocks) != LEVELS or len(self.heads) != LEVELS:
            raise ValueError(f"num_blocks and heads need {LEVELS} entries, got {self.num_blocks} and "
                             f"{self.heads}")
        for level, h in enumerate(self.heads):
            if (self.dim * 2 ** level) % h:
                raise ValueError(f"heads[{level}] = {h} does not divide the level's width "
                                 f"{self.dim * 2 ** level}")


# ---- Channel LayerNorm: normalise each pixel's channel vector ----------------------------
class ChannelNorm(nn.Module):
    """(x - mean) / std over the channels (axis 1), times a weight, plus a bias ("WithBias");
    x / std times a weight, the mean not subtracted ("BiasFree").

    The authors move channels last and normalise there; reducing over axis 1 in place is the
    same arithmetic without the two transposes (about 2x faster on the CPU).
    """

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if kind == "WithBias" else None

    def forward(self, x: Tensor) -> Tensor:
        var = x.var(1, keepdim=True, unbiased=False)
        if self.bias is None:
            return x / torch.sqrt(var + LAYERNORM_EPS) * self.weight[:, None, None]
        normed = (x - x.mean(1, keepdim=True)) / torch.sqrt(var + LAYERNORM_EPS)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


def named(name: str, module: nn.Module) -> nn.Sequential:
    """``module`` under the attribute name the authors' keys give it (``norm1.body.weight``)."""
    return nn.Sequential(OrderedDict({name: module}))


# ---- The two halves of a Transformer block -----------------------------------------------
def pointwise(in_ch: int, out_ch: int, bias: bool) -> nn.Conv2d:
    """A 1x1 convolution."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=bias)


def depthwise(ch: int, bias: bool) -> nn.Conv2d:
    """A 3x3 convolution per channel."""
    return nn.Conv2d(ch, ch, kernel_size=3, padding=1, groups=ch, bias=bias)


class Attention(nn.Module):
    """MDTA: per head, softmax(temperature * q k^T) v over channels, q and k L2-normalised."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = pointwise(dim, dim * 3, bias)
        self.qkv_dwconv = depthwise(dim * 3, bias)
        self.project_out = pointwise(dim, dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class FeedForward(nn.Module):
    """GDFN: a depthwise-convolved expansion, split in two, gelu(half 1) gating half 2."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = pointwise(dim, hidden * 2, bias)
        self.dwconv = depthwise(hidden * 2, bias)
        self.project_out = pointwise(hidden, dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """x + MDTA(norm(x)), then x + GDFN(norm(x))."""

    def __init__(self, dim: int, num_heads: int, cfg: RestormerConfig):
        super().__init__()
        self.norm1 = named("body", ChannelNorm(dim, cfg.layernorm_type))
        self.attn = Attention(dim, num_heads, cfg.bias)
        self.norm2 = named("body", ChannelNorm(dim, cfg.layernorm_type))
        self.ffn = FeedForward(dim, cfg.ffn_expansion_factor, cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def blocks(n: int, dim: int, num_heads: int, cfg: RestormerConfig) -> nn.Sequential:
    """n Transformer blocks of one width."""
    return nn.Sequential(*(TransformerBlock(dim, num_heads, cfg) for _ in range(n)))


# ---- Resampling between levels -----------------------------------------------------------
def downsample(ch: int) -> nn.Sequential:
    """Half the size, twice the channels: conv3x3 c -> c/2, then PixelUnshuffle(2)."""
    conv = nn.Conv2d(ch, ch // 2, 3, padding=1, bias=False)
    return named("body", nn.Sequential(conv, nn.PixelUnshuffle(2)))


def upsample(ch: int) -> nn.Sequential:
    """Twice the size, half the channels: conv3x3 c -> 2c, then PixelShuffle(2)."""
    conv = nn.Conv2d(ch, ch * 2, 3, padding=1, bias=False)
    return named("body", nn.Sequential(conv, nn.PixelShuffle(2)))


# ---- The whole network -------------------------------------------------------------------
def parameter_count(cfg: RestormerConfig) -> int:
    """The number of weights ``Restormer(cfg)`` holds, worked out from the options alone: exact,
    and as cheap for any width or depth (nothing is built)."""
    d, n, h, b = cfg.dim, cfg.num_blocks, cfg.heads, int(cfg.bias)

    def block(dim: int, heads: int) -> int:
        hidden = int(dim * cfg.ffn_expansion_factor)
        norm = dim * (2 if cfg.layernorm_type == "WithBias" else 1)
        attention = heads + dim * 3 * dim + 3 * dim * b + 3 * dim * 9 + 3 * dim * b + dim * dim + dim * b
        ffn = dim * 2 * hidden + 2 * hidden * b + 2 * hidden * 9 + 2 * hidden * b + hidden * dim + dim * b
        return 2 * norm + attention + ffn

    levels = (sum(n[i] * block(d * 2 ** i, h[i]) for i in range(LEVELS))  # the encoder and latent
              + n[2] * block(d * 4, h[2]) + n[1] * block(d * 2, h[1])  # decoder levels 3 and 2
              + (n[0] + cfg.num_refinement_blocks) * block(d * 2, h[0]))  # level 1, refinement
    down = sum(ch * (ch // 2) * 9 for ch in (d, d * 2, d * 4))
    up = sum(ch * ch * 2 * 9 for ch in (d * 8, d * 4, d * 2))
    reduce = d * 8 * d * 4 + d * 4 * b + d * 4 * d * 2 + d * 2 * b
    ends = cfg.inp_channels * d * 9 + d * b + d * 2 * cfg.out_channels * 9 + cfg.out_channels * b
    return levels + down + up + reduce + ends


class Restormer(nn.Module):
    """Encoder levels at dim, 2dim, 4dim, latent at 8dim, decoder back up, refinement, residual."""

    def __init__(self, cfg: RestormerConfig):
        super().__init__()
        self.cfg = cfg
        self.task_names = list(cfg.task_names)
        self.scale = [1] * len(self.task_names)
        d, n, h = cfg.dim, cfg.num_blocks, cfg.heads
        # the first 3x3 convolution: image -> dim feature maps
        self.patch_embed = named("proj", nn.Conv2d(cfg.inp_channels, d, 3, padding=1, bias=cfg.bias))
        self.encoder_level1 = blocks(n[0], d, h[0], cfg)
        self.down1_2 = downsample(d)
        self.encoder_level2 = blocks(n[1], d * 2, h[1], cfg)
        self.down2_3 = downsample(d * 2)
        self.encoder_level3 = blocks(n[2], d * 4, h[2], cfg)
        self.down3_4 = downsample(d * 4)
        self.latent = blocks(n[3], d * 8, h[3], cfg)
        self.up4_3 = upsample(d * 8)
        self.reduce_chan_level3 = pointwise(d * 8, d * 4, cfg.bias)
        self.decoder_level3 = blocks(n[2], d * 4, h[2], cfg)
        self.up3_2 = upsample(d * 4)
        self.reduce_chan_level2 = pointwise(d * 4, d * 2, cfg.bias)
        self.decoder_level2 = blocks(n[1], d * 2, h[1], cfg)
        self.up2_1 = upsample(d * 2)  # level 1 keeps the 2dim of the concatenation
        self.decoder_level1 = blocks(n[0], d * 2, h[0], cfg)
        self.refinement = blocks(cfg.num_refinement_blocks, d * 2, h[0], cfg)
        self.output = nn.Conv2d(d * 2, cfg.out_channels, kernel_size=3, padding=1, bias=cfg.bias)

    def forward(self, x: Tensor, task_id: int = 0) -> Tensor:
        """Restore a (B, C, H, W) batch in 0..rgb_range, any H and W; ``task_id`` must be 0."""
        if not 0 <= task_id < len(self.task_names):
            raise IndexError(f"task_id {task_id} is out of range for Restormer ({self.task_names})")
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % SIZE_MULTIPLE, -w % SIZE_MULTIPLE
        inp = x / self.cfg.rgb_range
        if pad_h or pad_w:
            inp = F.pad(inp, (0, pad_w, 0, pad_h), mode="reflect" if pad_h < h and pad_w < w else "replicate")
        out = self.network(inp) + inp
        return out[..., :h, :w] * self.cfg.rgb_range

    def network(self, inp: Tensor) -> Tensor:
        """The authors' forward without its residual, for sides that divide by 8, in [0, 1]."""
        enc1 = self.encoder_level1(self.patch_embed(inp))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))
        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        return self.output(self.refinement(dec1))
