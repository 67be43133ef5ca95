"""A UNet denoiser for images, with time, class and multi-label conditioning.

The architecture follows Ho et al. (2020, Appendix B) at a small scale: residual blocks
with GroupNorm, a sinusoidal time embedding through an MLP, self-attention at the low
resolutions, and skip connections between the encoder and decoder. Conditioning enters
through the embedding added to the time embedding in every residual block:

* ``num_classes=K``: ``nn.Embedding(K + 1, d)``; index K is the *null token* used for
  classifier-free guidance (label dropout in training, the unconditional branch when
  sampling). This is how the conditional-MNIST homework (002_…) injects labels.
* ``num_labels=L``: a multi-hot vector (B, L) through ``nn.Linear(L, d)``, as the iCLEVR
  lab (003_…) does; the all-zero vector is the null condition.

Inputs whose side is not a multiple of 2^(levels-1) (28×28 MNIST with three levels) are
padded by reflection and the output cropped back, so 8×8, 28×28, 32×32 and 64×64 all work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import timestep_embedding


@dataclass
class UNetConfig:
    """Size and conditioning of a :class:`UNet`."""

    in_channels: int = 1  # image channels (1 for MNIST, 3 for RGB)
    base_channels: int = 32  # width of the first level
    channel_mults: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; len = number of levels
    num_res_blocks: int = 1  # residual blocks per level (encoder; the decoder has one more)
    attn_levels: tuple[int, ...] = (2,)  # levels (0 = full resolution) with self-attention
    num_heads: int = 4  # attention heads
    dropout: float = 0.0  # dropout inside residual blocks
    groups: int = 8  # GroupNorm groups (must divide every width)
    num_classes: int | None = None  # class-conditional with K classes (+1 null token)
    num_labels: int | None = None  # multi-label conditional with an L-dim multi-hot vector

    def to_dict(self) -> dict:
        return {**asdict(self), "channel_mults": list(self.channel_mults), "attn_levels": list(self.attn_levels)}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(**{**d, "channel_mults": tuple(d["channel_mults"]), "attn_levels": tuple(d["attn_levels"])})


class ResBlock(nn.Module):
    """GroupNorm → SiLU → Conv, + embedding projection, GroupNorm → SiLU → Dropout → Conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B or 1, C_out, 1, 1) broadcast
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H×W positions, with a residual connection."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        h, _ = self.attn(h, h, h, need_weights=False)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """ε-network (or x0/μ/v) for images: ``forward(x, t, y=None)``.

    Args:
        x: (B, C, H, W) noisy images.
        t: (B,) or (1,) integer timesteps (a (1,) timestep is shared by the batch).
        y: class indices (B,) with ``num_classes`` (the value ``num_classes`` is the null
           token), or multi-hot (B, L) with ``num_labels``; ``None`` means unconditional
           (the null condition).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        c = self.config = config
        if c.num_classes is not None and c.num_labels is not None:
            raise ValueError("set num_classes (one label per image) or num_labels (multi-hot), not both")
        widths = [c.base_channels * m for m in c.channel_mults]
        for w in widths:
            if w % c.groups or w % c.num_heads:
                raise ValueError(f"every width must be divisible by groups={c.groups} and num_heads={c.num_heads}; got width {w}")
        emb_dim = 4 * c.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(c.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.num_classes is not None:
            self.class_emb = nn.Embedding(c.num_classes + 1, emb_dim)  # index num_classes = null token
        if c.num_labels is not None:
            self.label_emb = nn.Linear(c.num_labels, emb_dim)  # multi-hot → embedding (003 report)
        self.inp = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [widths[0]], widths[0]
        for lvl, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(ch, w, emb_dim, c.groups, c.dropout))
                ch = w
                if lvl in c.attn_levels:
                    blocks.append(SelfAttention(ch, c.num_heads, c.groups))
                skips.append(ch)
            if lvl < len(widths) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # downsample ×2
                skips.append(ch)
            self.down.append(blocks)
        self.mid1 = ResBlock(ch, ch, emb_dim, c.groups, c.dropout)
        self.mid_attn = SelfAttention(ch, c.num_heads, c.groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, c.groups, c.dropout)
        self.up = nn.ModuleList()
        for lvl, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), w, emb_dim, c.groups, c.dropout))
                ch = w
                if lvl in c.attn_levels:
                    blocks.append(SelfAttention(ch, c.num_heads, c.groups))
            if lvl > 0:
                blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
                blocks.append(nn.Conv2d(ch, ch, 3, padding=1))
            self.up.append(blocks)
        self.out = nn.Sequential(nn.GroupNorm(c.groups, ch), nn.SiLU(), nn.Conv2d(ch, c.in_channels, 3, padding=1))
        self.levels = len(widths)

    @property
    def null_label(self) -> int:
        """The index of the null token (class-conditional models)."""
        if self.config.num_classes is None:
            raise ValueError("this UNet is not class-conditional (num_classes=None)")
        return self.config.num_classes

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Time embedding plus condition embedding. (B or 1, emb_dim)"""
        emb = self.time_mlp(timestep_embedding(t.reshape(-1), self.config.base_channels))  # (B or 1, E)
        c = self.config
        if c.num_classes is not None:
            if y is None:
                y = torch.full((batch,), c.num_classes, dtype=torch.long, device=emb.device)
            if y.dtype not in (torch.int32, torch.int64) or y.dim() != 1:
                raise ValueError(f"class labels must be an integer tensor of shape (B,), got {tuple(y.shape)} {y.dtype}")
            if (y < 0).any() or (y > c.num_classes).any():
                raise ValueError(f"class labels must lie in [0, {c.num_classes}] ({c.num_classes} is the null token)")
            emb = emb + self.class_emb(y)  # (B, E)
        elif c.num_labels is not None:
            if y is None:
                y = torch.zeros(batch, c.num_labels, device=emb.device)
            if y.dim() != 2 or y.shape[1] != c.num_labels:
                raise ValueError(f"multi-hot labels must have shape (B, {c.num_labels}), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y.float())  # (B, E)
        elif y is not None:
            raise ValueError("this UNet is unconditional; pass y=None")
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        B, _, H, W = x.shape
        m = 2 ** (self.levels - 1)
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:  # pad to a multiple of 2^(levels-1); cropped back at the end
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
        emb = self.embed(t, y, B)
        h = self.inp(x)  # (B, C0, H', W')
        hs = [h]
        for blocks in self.down:
            for blk in blocks:
                h = blk(h, emb) if isinstance(blk, ResBlock) else blk(h)
                if not isinstance(blk, SelfAttention):
                    hs.append(h)
                else:
                    hs[-1] = h
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks in self.up:
            for blk in blocks:
                if isinstance(blk, ResBlock):
                    h = blk(torch.cat([h, hs.pop()], dim=1), emb)
                else:
                    h = blk(h)
        out = self.out(h)  # (B, C, H', W')
        return out[:, :, :H, :W]
