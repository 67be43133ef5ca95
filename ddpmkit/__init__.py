"""ddpmkit: the library behind the DDPM course companion.

Importing ddpmkit has no side effects: no downloads, no global seeds, no warnings filters.
"""

from .diffusion import PREDICTORS, Prediction, Predictor, convert, diffusion_loss, q_posterior, q_sample, training_target
from .guidance import CFGModel
from .likelihood import elbo_terms
from .models import ConcatMLP, MLPConfig, TimeLinear, TimeLinearMLP, timestep_embedding
from .networks import build_model
from .profile import by_profile, get_profile
from .samplers import SAMPLERS, SampleOutput, ddim_sample, ddim_timesteps, ddpm_sample, sample
from .schedules import SCHEDULES, NoiseSchedule, ScheduleConfig, make_betas
from .unet import UNet, UNetConfig

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    "PREDICTORS",
    "SAMPLERS",
    "SCHEDULES",
    "CFGModel",
    "ConcatMLP",
    "MLPConfig",
    "NoiseSchedule",
    "Prediction",
    "Predictor",
    "SampleOutput",
    "ScheduleConfig",
    "TimeLinear",
    "TimeLinearMLP",
    "UNet",
    "UNetConfig",
    "__version__",
    "build_model",
    "by_profile",
    "convert",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "diffusion_loss",
    "elbo_terms",
    "get_profile",
    "make_betas",
    "q_posterior",
    "q_sample",
    "sample",
    "timestep_embedding",
    "training_target",
]  # fmt: skip
