"""The Image Processing Transformer (Chen et al., CVPR 2021), read top to bottom like the paper.

Per-task convolutional heads and tails around one shared Transformer encoder-decoder body.
Module and parameter names follow the authors' released code, so their checkpoints load
unchanged and strictly (see ``model/checkpoint.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks import MIM, default_task_names

from .mim import pixel_mask

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, used by the authors' MeanShift layers
HEAD_KERNEL = 3
RESBLOCK_KERNEL = 5  # the heads' ResBlocks use 5x5 convolutions
MLP_RATIO = 4  # hidden width of every feed-forward block = 4 x embedding width
MASK_TOKEN_STD = 0.02  # SimMIM's initialisation of the mask token
ATTENTION_KINDS = ("auto", "math", "sdpa")  # see Attention


@dataclass
class IPTConfig:
    """Everything that shapes the network; the option names are the authors'."""

    scale: list[int] = field(default_factory=lambda: [2, 3, 4, 1, 1, 1])
    n_feats: int = 64
    n_colors: int = 3
    rgb_range: float = 255
    patch_size: int = 48
    patch_dim: int = 3
    num_heads: int = 12
    num_layers: int = 12
    num_queries: int = 6
    dropout_rate: float = 0.0
    no_mlp: bool = False
    pos_every: bool = False
    no_pos: bool = False
    no_norm: bool = False
    task_names: list[str] | None = None
    attention: str = "auto"  # see Attention


# ---- Convolutional heads and tails (the authors' EDSR building blocks) -------------------
def conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    """A same-padded convolution with bias."""
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=True)


class MeanShift(nn.Conv2d):
    """Fixed 1x1 convolution that subtracts (sign -1) or adds (sign +1) the RGB mean."""

    def __init__(self, rgb_range: float, sign: int):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(RGB_MEAN)
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """conv-ReLU-conv with a residual connection."""

    def __init__(self, n_feats: int, kernel: int):
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats, kernel), nn.ReLU(True),
                                  conv(n_feats, n_feats, kernel))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def upsampler(scale: int, n_feats: int) -> nn.Sequential:
    """Sub-pixel upsampling: x2 and x4 by PixelShuffle(2) steps, x3 by PixelShuffle(3), x1 empty."""
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:  # a power of two, including 1
        for _ in range(int(math.log2(scale))):
            layers += [conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"IPT supports scales 1, 2, 3 and powers of two; got {scale}")
    return nn.Sequential(*layers)


def make_head(n_colors: int, n_feats: int) -> nn.Sequential:
    """Task head: conv3x3 then two 5x5 ResBlocks."""
    return nn.Sequential(conv(n_colors, n_feats, HEAD_KERNEL),
                         ResBlock(n_feats, RESBLOCK_KERNEL), ResBlock(n_feats, RESBLOCK_KERNEL))


def make_tail(scale: int, n_feats: int, n_colors: int) -> nn.Sequential:
    """Task tail: upsampler then conv3x3 back to colours."""
    return nn.Sequential(upsampler(scale, n_feats), conv(n_feats, n_colors, HEAD_KERNEL))


# ---- The Transformer body ----------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention without biases, with the parameter names of nn.MultiheadAttention.

    Tensors are batch-first (B, N, D). ``kind`` "math" is the authors' arithmetic (scaled query,
    matmul, softmax, matmul), bit-identical to their nn.MultiheadAttention on the CPU; "sdpa" runs
    ``scaled_dot_product_attention`` (fused kernels, less memory; differs by float rounding);
    "auto" takes sdpa on CUDA and math elsewhere.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, kind: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by num_heads {num_heads}")
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.kind = kind
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        if k is q:  # self-attention: query and key projections in one matmul
            q, k = F.linear(q, self.in_proj_weight[:2 * w_q.shape[0]]).chunk(2, dim=-1)
        else:
            q, k = F.linear(q, w_q), F.linear(k, w_k)
        q, k, v = self._split(q), self._split(k), self._split(F.linear(v, w_v))
        q = q * q.shape[-1] ** -0.5
        p = self.dropout if self.training else 0.0
        if self.kind == "sdpa" or (self.kind == "auto" and q.is_cuda):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=1.0)
        else:
            out = F.dropout(torch.softmax(q @ k.transpose(-2, -1), dim=-1), p) @ v
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def _split(self, x: Tensor) -> Tensor:
        b, n, dim = x.shape
        return x.view(b, n, self.num_heads, dim // self.num_heads).transpose(1, 2)


def feed_forward(dim: int, hidden: int, dropout: float) -> tuple[nn.Linear, nn.Dropout, nn.Linear]:
    """The two Linear layers of a Transformer block and the dropout between them."""
    return nn.Linear(dim, hidden), nn.Dropout(dropout), nn.Linear(hidden, dim)


def norm(dim: int, no_norm: bool) -> nn.Module:
    """LayerNorm, or Identity under ``--no_norm``."""
    return nn.Identity() if no_norm else nn.LayerNorm(dim)


def with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    """x plus an optional positional or query embedding."""
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: x += MHA(LN1 x); x += FFN(LN2 x)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, dropout: float, no_norm: bool,
                 attention: str = "auto"):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout, attention)
        self.linear1, self.dropout, self.linear2 = feed_forward(dim, hidden, dropout)
        self.norm1, self.norm2 = norm(dim, no_norm), norm(dim, no_norm)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        y = self.norm1(x)
        qk = with_pos(y, pos)
        x = x + self.dropout1(self.self_attn(qk, qk, y))
        y = self.norm2(x)
        return x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(y), inplace=True))))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention with the task query, cross-attention, FFN."""

    def __init__(self, dim: int, num_heads: int, hidden: int, dropout: float, no_norm: bool,
                 attention: str = "auto"):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout, attention)
        self.multihead_attn = Attention(dim, num_heads, dropout, attention)
        self.linear1, self.dropout, self.linear2 = feed_forward(dim, hidden, dropout)
        self.norm1, self.norm2, self.norm3 = (norm(dim, no_norm) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, t: Tensor, memory: Tensor, pos: Tensor | None = None,
                query: Tensor | None = None) -> Tensor:
        y = self.norm1(t)
        qk = with_pos(y, query)
        t = t + self.dropout1(self.self_attn(qk, qk, y))
        y = self.norm2(t)
        t = t + self.dropout2(self.multihead_attn(with_pos(y, query), with_pos(memory, pos), memory))
        y = self.norm3(t)
        return t + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(y), inplace=True))))


class LearnedPositionalEncoding(nn.Module):
    """One learned vector per token position."""

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.pe = nn.Embedding(num_tokens, dim)
        self.register_buffer("position_ids", torch.arange(num_tokens).expand((1, -1)))

    def forward(self) -> Tensor:
        # position_ids is 0..N-1 (kept for the authors' keys): a view of the table, no gather
        return self.pe.weight.unsqueeze(0)  # (1, N, D)


class VisionTransformer(nn.Module):
    """The shared body: patch tokens -> encoder -> task-query decoder -> patch tokens."""

    def __init__(self, cfg: IPTConfig):
        super().__init__()
        if cfg.patch_size % cfg.patch_dim:
            raise ValueError(f"patch_size {cfg.patch_size} is not divisible by patch_dim {cfg.patch_dim}")
        self.cfg = cfg
        self.num_tokens = (cfg.patch_size // cfg.patch_dim) ** 2
        dim = cfg.n_feats * cfg.patch_dim ** 2
        hidden = dim * MLP_RATIO
        drop = cfg.dropout_rate
        if not cfg.no_mlp:
            self.linear_encoding = nn.Linear(dim, dim)
            self.mlp_head = nn.Sequential(nn.Linear(dim, hidden), nn.Dropout(drop), nn.ReLU(),
                                          nn.Linear(hidden, dim), nn.Dropout(drop))
            self.query_embed = nn.Embedding(cfg.num_queries, dim * self.num_tokens)
        layer_args = (dim, cfg.num_heads, hidden, drop, cfg.no_norm, cfg.attention)
        # ModuleDicts of one list, so that keys read ``encoder.layers.{n}``
        self.encoder = nn.ModuleDict({"layers": nn.ModuleList(EncoderLayer(*layer_args)
                                                              for _ in range(cfg.num_layers))})
        self.decoder = nn.ModuleDict({"layers": nn.ModuleList(DecoderLayer(*layer_args)
                                                              for _ in range(cfg.num_layers))})
        if not cfg.no_pos:
            self.position_encoding = LearnedPositionalEncoding(self.num_tokens, dim)
        self.dropout_layer1 = nn.Dropout(drop)
        if cfg.no_norm:  # the authors' initialisation when LayerNorm is switched off
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=1 / m.weight.size(1))

    def forward(self, x: Tensor, query_idx: int) -> tuple[Tensor, Tensor]:
        """Features (B, C, P, P) -> (features, output tokens (B, N, D))."""
        p, size = self.cfg.patch_dim, x.shape[-1]
        x = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, N, D)
        query = None
        if not self.cfg.no_mlp:
            x = self.dropout_layer1(self.linear_encoding(x)) + x
            query = self.query_embed.weight[query_idx].view(1, self.num_tokens, -1)
        pos = None if self.cfg.no_pos else self.position_encoding()
        every = pos if self.cfg.pos_every else None  # at every layer, or once on the input
        if not self.cfg.pos_every:
            x = with_pos(x, pos)
        for layer in self.encoder.layers:
            x = layer(x, every)
        memory = x
        for layer in self.decoder.layers:
            x = layer(x, memory, every, query)
        if not self.cfg.no_mlp:
            x = self.mlp_head(x) + x
        return F.fold(x.transpose(1, 2), size, p, stride=p), x


# ---- The whole network -------------------------------------------------------------------
def parameter_count(cfg: IPTConfig) -> int:
    """The number of weights ``IPT(cfg)`` holds, worked out from the options alone: exact, and as
    cheap for a width of 10^30 or 10^13 layers as for the paper's (nothing is built)."""
    f, c, p = cfg.n_feats, cfg.n_colors, cfg.patch_dim
    dim, tokens = f * p * p, (cfg.patch_size // p) ** 2
    hidden = dim * MLP_RATIO

    def conv_weights(in_ch: int, out_ch: int, kernel: int) -> int:
        return in_ch * out_ch * kernel * kernel + out_ch

    def tail(scale: int) -> int:
        steps = [4] * (scale.bit_length() - 1) if scale & (scale - 1) == 0 else [9]
        return sum(conv_weights(f, k * f, 3) for k in steps) + conv_weights(f, c, HEAD_KERNEL)

    head = conv_weights(c, f, HEAD_KERNEL) + 4 * conv_weights(f, f, RESBLOCK_KERNEL)
    attention = 4 * dim * dim  # the in-projection (3 dim x dim) and the out-projection, no biases
    ffn = 2 * dim * hidden + hidden + dim
    layer_norm = 0 if cfg.no_norm else 2 * dim
    body = cfg.num_layers * (attention + ffn + 2 * layer_norm + 2 * attention + ffn + 3 * layer_norm)
    if not cfg.no_mlp:  # linear_encoding, mlp_head, query_embed
        body += dim * dim + dim + 2 * dim * hidden + hidden + dim + cfg.num_queries * dim * tokens
    if not cfg.no_pos:
        body += tokens * dim
    mask = f * p * p if MIM in (cfg.task_names or default_task_names(cfg.scale)) else 0
    return 2 * conv_weights(3, 3, 1) + len(cfg.scale) * head + sum(map(tail, cfg.scale)) + body + mask


class IPT(nn.Module):
    """Heads, the shared body and tails; ``forward(x, task_id)`` runs one task."""

    def __init__(self, cfg: IPTConfig):
        super().__init__()
        n_tasks = len(cfg.scale)  # one head, tail and query per task
        if not cfg.no_mlp and cfg.num_queries < n_tasks:
            raise ValueError(f"num_queries {cfg.num_queries} is below the number of heads {n_tasks}")
        self.cfg = cfg
        self.scale = list(cfg.scale)
        self.task_names = list(cfg.task_names or default_task_names(cfg.scale))
        self.patch_size = cfg.patch_size
        self.sub_mean = MeanShift(cfg.rgb_range, sign=-1)
        self.add_mean = MeanShift(cfg.rgb_range, sign=+1)
        self.head = nn.ModuleList(make_head(cfg.n_colors, cfg.n_feats) for _ in cfg.scale)
        self.body = VisionTransformer(cfg)
        self.tail = nn.ModuleList(make_tail(s, cfg.n_feats, cfg.n_colors) for s in cfg.scale)
        if MIM in self.task_names:  # masked image modelling: one learned cell of head features
            self.mask_token = nn.Parameter(torch.zeros(1, cfg.n_feats, cfg.patch_dim, cfg.patch_dim))
            nn.init.trunc_normal_(self.mask_token, std=MASK_TOKEN_STD)

    def forward(self, x: Tensor, task_id: int = 0, return_tokens: bool = False,
                mask: Tensor | None = None):
        """Restore a (B, C, P, P) batch in 0..rgb_range with head/tail/query ``task_id``.

        ``mask`` (B, P/patch_dim, P/patch_dim) bool, for masked image modelling: the masked cells'
        pixels become the mean colour before the head and their features the mask token after it.
        """
        if not 0 <= task_id < len(self.head):
            raise IndexError(f"task_id {task_id} is out of range for a {len(self.head)}-head model")
        if x.shape[-2:] != (self.patch_size, self.patch_size):
            raise ValueError(f"IPT's body takes {self.patch_size}x{self.patch_size} inputs, got "
                             f"{tuple(x.shape[-2:])}; use model.tiling.restore for whole images")
        h = self.head[task_id](self.sub_mean(x)) if mask is None else self._masked_head(x, task_id, mask)
        res, tokens = self.body(h, task_id)
        out = self.add_mean(self.tail[task_id](res + h))
        return (out, tokens) if return_tokens else out

    def _masked_head(self, x: Tensor, task_id: int, mask: Tensor) -> Tensor:
        """Head features of x with the masked cells blanked before and replaced after the head."""
        if not hasattr(self, "mask_token"):
            raise ValueError("a mask needs a model with a mim head (its mask token)")
        grid = self.patch_size // self.cfg.patch_dim
        if mask.shape[1:] != (grid, grid) or mask.shape[0] != x.shape[0]:
            raise ValueError(f"the mask must be (batch, {grid}, {grid}), got {tuple(mask.shape)}")
        m = pixel_mask(mask.to(x.device), self.cfg.patch_dim)
        h = self.head[task_id](self.sub_mean(x).masked_fill(m, 0))
        cells = self.mask_token.to(h.dtype).repeat(1, 1, grid, grid)
        return torch.where(m, cells, h)
