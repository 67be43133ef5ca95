import pytest
import torch

from ddpmkit.models import MLPConfig
from ddpmkit.networks import build_model


@pytest.fixture
def tiny_model():
    """A fixed, untrained TimeLinear MLP: deterministic weights for sampler tests."""
    torch.manual_seed(0)
    return build_model(MLPConfig(dim=2, hidden=(32, 32))).eval()
