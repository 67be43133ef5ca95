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

Inputs whose side is not a multiple of 2^(levels-1) (30×30 with three levels, say) are
padded by reflection and the output cropped back; 28×28 MNIST with three levels needs no
padding (28 → 14 → 7). 8×8, 28×28, 32×32 and 64×64 all work.
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

    def __post_init__(self):
        self.channel_mults, self.attn_levels = tuple(self.channel_mults), tuple(self.attn_levels)
        if self.num_classes is not None and self.num_labels is not None:
            raise ValueError("set num_classes (one label per image) or num_labels (multi-hot), not both")
        if self.in_channels < 1 or self.base_channels < 1 or self.num_res_blocks < 1 or not self.channel_mults:
            raise ValueError("in_channels, base_channels and num_res_blocks must be >= 1, and channel_mults non-empty")
        for w in (self.base_channels * m for m in self.channel_mults):
            if w % self.groups or w % self.num_heads:
                raise ValueError(f"every width must be divisible by groups={self.groups} and num_heads={self.num_heads}; got width {w}")
        if any(not 0 <= lvl < len(self.channel_mults) for lvl in self.attn_levels):
            raise ValueError(f"attn_levels must name levels 0..{len(self.channel_mults) - 1}, got {self.attn_levels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got dropout={self.dropout!r}")

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
        widths = [c.base_channels * m for m in c.channel_mults]  # checked by UNetConfig
        emb_dim = 4 * c.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(c.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.num_classes is not None:
            self.class_emb = nn.Embedding(c.num_classes + 1, emb_dim)  # index num_classes = null token
        if c.num_labels is not None:
            self.label_emb = nn.Linear(c.num_labels, emb_dim)  # multi-hot → embedding (003 report)
        self.inp = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.levels = len(widths)
        # Encoder: each level is (res blocks, their attentions, downsample); every block's output
        # and every downsampled map is kept as a skip for the decoder. The last level keeps its size.
        self.downs = nn.ModuleList()
        skips, ch = [widths[0]], widths[0]  # channels of each skip, in the order they are kept
        for lvl, w in enumerate(widths):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(ch, w, emb_dim, c.groups, c.dropout))
                attns.append(SelfAttention(w, c.num_heads, c.groups) if lvl in c.attn_levels else nn.Identity())
                ch = w
                skips.append(ch)
            last = lvl == self.levels - 1
            downsample = nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)  # ×1/2
            if not last:
                skips.append(ch)
            self.downs.append(nn.ModuleList([blocks, attns, downsample]))
        # Bottleneck: res block, attention, res block.
        self.mid1 = ResBlock(ch, ch, emb_dim, c.groups, c.dropout)
        self.mid_attn = SelfAttention(ch, c.num_heads, c.groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, c.groups, c.dropout)
        # Decoder, deepest level first: each level has one block more than the encoder's, each
        # taking one skip (concatenated on channels), then an upsample (none at full resolution).
        self.ups = nn.ModuleList()
        for lvl, w in reversed(list(enumerate(widths))):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), w, emb_dim, c.groups, c.dropout))
                attns.append(SelfAttention(w, c.num_heads, c.groups) if lvl in c.attn_levels else nn.Identity())
                ch = w
            upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)) if lvl > 0 else nn.Identity()
            self.ups.append(nn.ModuleList([blocks, attns, upsample]))
        self.out = nn.Sequential(nn.GroupNorm(c.groups, ch), nn.SiLU(), nn.Conv2d(ch, c.in_channels, 3, padding=1))
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

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
        emb = self.embed(t, y, B)  # (B or 1, E)
        h = self.inp(x)  # (B, C0, H', W')
        hs = [h]  # the skips
        for lvl, (blocks, attns, downsample) in enumerate(self.downs):
            for block, attn in zip(blocks, attns):
                h = attn(block(h, emb))  # (B, C_lvl, H'/2^lvl, W'/2^lvl)
                hs.append(h)
            if lvl < self.levels - 1:
                h = downsample(h)  # (B, C_lvl, H'/2^(lvl+1), W'/2^(lvl+1))
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)  # (B, C_last, ...)
        for blocks, attns, upsample in self.ups:
            for block, attn in zip(blocks, attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))  # skip concatenated on channels
            h = upsample(h)  # ×2, except at full resolution
        out = self.out(h)  # (B, C, H', W')
        return out[:, :, :H, :W]


def _rename_legacy_keys(state_dict, prefix, *args) -> None:
    """Load weights saved before the levels were declared explicitly (ddpmkit 0.1's
    ``down.L.J`` / ``up.L.J`` lists of blocks, attentions and resamplers) into
    ``downs.L.{0: blocks, 1: attentions, 2: downsample}`` / ``ups.L.{..., 2: upsample}``."""
    import re

    old = [k for k in state_dict if re.match(re.escape(prefix) + r"(down|up)\.\d+\.\d+\.", k)]
    if not old:
        return
    # In the old lists each level held, in order: per block [ResBlock, SelfAttention?], then the
    # resampler(s). A ResBlock has conv1, an attention has attn, a downsample is a bare conv.
    for part in ("down", "up"):
        levels = sorted({int(k[len(prefix):].split(".")[1]) for k in old if k[len(prefix):].startswith(part + ".")})
        for lvl in levels:
            head = f"{prefix}{part}.{lvl}."
            entries = sorted({int(k[len(head):].split(".")[0]) for k in old if k.startswith(head)})
            block = 0
            for j in entries:
                keys = [k for k in old if k.startswith(f"{head}{j}.")]
                names = {k[len(f"{head}{j}."):] for k in keys}
                if any(n.startswith("conv1.") for n in names):
                    new, block = f"{prefix}{part}s.{lvl}.0.{block}.", block + 1
                elif any(n.startswith("attn.") for n in names):
                    new = f"{prefix}{part}s.{lvl}.1.{block - 1}."
                else:  # the resampler's conv: stride-2 conv (down) or the conv after upsampling (up)
                    new = f"{prefix}{part}s.{lvl}.2." + ("" if part == "down" else "1.")
                for k in keys:
                    state_dict[new + k[len(f"{head}{j}."):]] = state_dict.pop(k)
