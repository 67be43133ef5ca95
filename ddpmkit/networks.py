"""The one place a network config becomes a network: a UNet for images, an MLP for vectors."""

from __future__ import annotations

from torch import nn

from .models import ConcatMLP, MLPConfig, TimeLinearMLP
from .unet import UNet, UNetConfig

ModelConfig = MLPConfig | UNetConfig
MLP_KINDS = {"timelinear": TimeLinearMLP, "concat": ConcatMLP}  # MLPConfig.kind -> class


def build_model(config: ModelConfig) -> nn.Module:
    """The network ``config`` describes: :class:`UNet` for a :class:`UNetConfig`, else the MLP
    named by ``config.kind`` (``timelinear``: a KAIST-like TimeLinear stack; ``concat``: CS726's)."""
    if isinstance(config, UNetConfig):
        return UNet(config)
    if config.kind not in MLP_KINDS:
        raise ValueError(f"unknown model kind={config.kind!r}; choose one of {', '.join(MLP_KINDS)}")
    return MLP_KINDS[config.kind](config)


def config_to_dict(config: ModelConfig) -> dict:
    """``{"arch": "unet" | "mlp", "model": {...}}``: how a run's JSON stores its network."""
    return {"arch": "unet" if isinstance(config, UNetConfig) else "mlp", "model": config.to_dict()}


def config_from_dict(arch: str, d: dict) -> ModelConfig:
    """The inverse of :func:`config_to_dict`."""
    if arch not in ("unet", "mlp"):
        raise ValueError(f"unknown network arch={arch!r} in a run config; expected 'unet' or 'mlp'")
    return UNetConfig.from_dict(d) if arch == "unet" else MLPConfig.from_dict(d)
