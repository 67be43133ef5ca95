"""Contract tests: every registered schedule, predictor, sampler and data set inherits them
(in the style of diffusers' ``SchedulerCommonTest``). Registering a new entry is enough for
it to be tested here; no test has to be written for it."""

import ast
import dataclasses
import inspect
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.data import DATASETS, load_dataset
from ddpmkit.diffusion import PREDICTORS, check_predictor, convert, q_posterior, q_sample, training_target
from ddpmkit.images import MissingTrainingSplitWarning
from ddpmkit.models import MLPConfig
from ddpmkit.networks import build_model
from ddpmkit.recipes import for_dataset
from ddpmkit.samplers import SAMPLERS, sample
from ddpmkit.schedules import SCHEDULES, NoiseSchedule, ScheduleConfig, make_betas
from ddpmkit.train import Trainer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def schedule_config(name: str, T: int) -> ScheduleConfig:
    """A valid config of a registered schedule (the custom one gets the linear betas)."""
    extra = {"betas": tuple(make_betas("linear", T).tolist())} if "betas" in SCHEDULES[name].params else {}
    return ScheduleConfig(name=name, T=T, **extra)


def compatible(predictor: str, schedule: NoiseSchedule) -> bool:
    try:
        check_predictor(predictor, schedule)
    except ValueError:
        return False
    return True


# --- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [2, 10, 1000])
def test_schedule_betas_are_float64_in_range(name, T):
    cfg = schedule_config(name, T)
    b = make_betas(**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "betas"}, betas=cfg.betas)
    assert b.dtype == torch.float64 and b.shape == (T,)
    assert (b > 0).all() and (b[:-1] < 1).all() and b[-1] <= 1


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_tensors_and_identities(name):
    s = NoiseSchedule.from_config(schedule_config(name, 1000))
    assert s.config == schedule_config(name, 1000)
    for key in s.TENSORS:
        v = getattr(s, key)
        assert v.dtype == torch.float64 and v.shape == (1000,) and not torch.isnan(v).any(), key
    # the only infinities are 1/√ᾱ_T and 1/√α_T of a zero terminal SNR
    finite_except_last = ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "sqrt_recip_alphas")
    for key in s.TENSORS:
        v = getattr(s, key)
        assert torch.isfinite(v if key not in finite_except_last else v[:-1]).all(), key
        assert torch.isfinite(v[-1]) or (key in finite_except_last and s.zero_terminal_snr), key
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), rtol=0, atol=0)
    assert (s.alphas_cumprod.diff() < 0).all() and s.alphas_cumprod[-1] < 0.01  # x_T is close to N(0, I) at T = 1000
    assert (s.posterior_variance >= 0).all() and (s.posterior_variance <= s.betas + 1e-15).all()
    torch.testing.assert_close(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod))


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("device", DEVICES)
def test_schedule_moves_and_round_trips(name, device):
    s = NoiseSchedule.from_config(schedule_config(name, 50))
    moved = s.to(device)
    assert moved.device.type == device and moved.dtype == torch.float32 and moved.T == s.T
    torch.testing.assert_close(moved.betas.cpu(), s.betas.float())
    again = NoiseSchedule.from_config(ScheduleConfig.from_dict(s.config.to_dict()))
    assert torch.equal(again.betas, s.betas)
    assert s.to(device, torch.float64).to("cpu", torch.float64).alphas_cumprod.equal(s.alphas_cumprod)


def test_unknown_schedule_is_refused_with_the_names():
    with pytest.raises(ValueError, match="unknown schedule.*linear"):
        ScheduleConfig(name="nope")


# --- predictors -------------------------------------------------------------------------------


@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_predictor_round_trip_at_every_step(predictor, name):
    """target(x0, ε) fed back through ``convert`` gives x0 and ε again, at every t; a pair
    that cannot do this (ε on a zero terminal SNR) is refused by ``check_predictor``."""
    s = NoiseSchedule.from_config(schedule_config(name, 100))
    if not compatible(predictor, s):
        with pytest.raises(ValueError, match="predictor"):
            check_predictor(predictor, s)
        return
    g = torch.Generator().manual_seed(0)
    t = torch.arange(100)
    x0, eps = torch.randn(100, 3, generator=g, dtype=torch.float64), torch.randn(100, 3, generator=g, dtype=torch.float64)
    x_t = q_sample(s, x0, t, eps)
    pred = convert(s, predictor, training_target(s, predictor, x0, eps, x_t, t), x_t, t)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(pred.mean, q_posterior(s, x0, x_t, t)[0], rtol=1e-7, atol=1e-7)


# --- samplers ---------------------------------------------------------------------------------


class PointMassOracle(torch.nn.Module):
    """The exact network for data that is one point x*: it outputs the training target of
    ``predictor`` for x0 = x*, so every correct sampler must land on x*."""

    def __init__(self, schedule: NoiseSchedule, predictor: str, point: torch.Tensor):
        super().__init__()
        self.s, self.predictor, self.point = schedule, predictor, point
        self.scale = torch.nn.Parameter(torch.ones(()))  # gives the model a device

    def forward(self, x, t, y=None):
        t = t.expand(x.shape[0])
        x0 = self.point.expand_as(x)
        a, b = self.s.sqrt_alphas_cumprod[t][:, None].float(), self.s.sqrt_one_minus_alphas_cumprod[t][:, None].float()
        eps = (x - a * x0) / b
        return training_target(self.s.to(x.device), self.predictor, x0, eps, x, t)


LINEAR = NoiseSchedule.create("linear", T=50)
CASES = list(itertools.product(SAMPLERS, PREDICTORS, SCHEDULES))


@pytest.mark.parametrize(("sampler", "predictor", "name"), CASES)
def test_sampler_lands_on_a_point_mass_with_a_finite_trajectory(sampler, predictor, name):
    s = NoiseSchedule.from_config(schedule_config(name, 40))
    point = torch.tensor([[0.7, -1.3]])
    model = PointMassOracle(s, predictor, point)
    options = {"steps": 10, "spacing": "trailing"} if "steps" in SAMPLERS[sampler].options else {}
    run = lambda seed: sample(sampler, model, s, (16, 2), predictor=predictor, generator=torch.Generator().manual_seed(seed),
                              record_every=1, **options)  # fmt: skip
    if not compatible(predictor, s):
        with pytest.raises(ValueError, match="predictor"):
            run(0)
        return
    out = run(0)
    assert out.x.shape == (16, 2) and out.x.dtype == torch.float32
    assert all(torch.isfinite(x).all() for x in out.trajectory), "a state of the chain is not finite"
    assert out.timesteps[-1] == -1 and all(a > b for a, b in itertools.pairwise(out.timesteps))
    torch.testing.assert_close(out.x, point.expand(16, 2), rtol=0, atol=2e-3)
    assert torch.equal(run(0).x, out.x), "the same generator seed must give the same samples"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_is_deterministic_given_a_seed_and_takes_a_prior(sampler, tiny_model):
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
    kw = {"steps": 7} if "steps" in SAMPLERS[sampler].options else {}
    a = sample(sampler, tiny_model, LINEAR, x_T=x_T, generator=torch.Generator().manual_seed(1), **kw).x
    b = sample(sampler, tiny_model, LINEAR, x_T=x_T, generator=torch.Generator().manual_seed(1), **kw).x
    assert torch.equal(a, b) and a.shape == x_T.shape and torch.isfinite(a).all()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_refuses_options_it_does_not_take(sampler, tiny_model):
    spec = SAMPLERS[sampler]
    assert all(v is not inspect.Parameter.empty for v in spec.options.values()), "every option needs a default"
    with pytest.raises(ValueError, match=f"sampler {sampler!r} does not take bogus"):
        sample(sampler, tiny_model, LINEAR, (4, 2), bogus=1)


# --- data sets --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _quiet_mnist_fallback():
    """The test split stands in for MNIST's training split here (it warns, as it should)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingTrainingSplitWarning)
        yield


def _load(name, n, seed):
    try:
        return DATASETS[name].load(n, seed)
    except FileNotFoundError as e:  # MNIST: only where its files are on disk ($DDPMKIT_DATA)
        pytest.skip(str(e))


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_shapes_labels_and_seeds(name):
    spec = DATASETS[name]
    x, y, source = _load(name, 64, 1)
    n = len(x)
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == spec.shape and torch.isfinite(x).all() and source
    assert spec.fixed_size or n == 64
    if spec.kind == "image":
        assert x.min() >= -1 and x.max() <= 1
    if spec.num_classes is not None:
        assert y.dtype == torch.int64 and y.shape == (n,) and 0 <= y.min() and y.max() < spec.num_classes
    if spec.num_labels is not None:
        assert y.shape == (n, spec.num_labels) and set(y.unique().tolist()) <= {0.0, 1.0}
    again = _load(name, 64, 1)[0]
    assert torch.equal(x, again), "the same seed must give the same data"
    if not spec.fixed_size:
        assert not torch.equal(x, _load(name, 64, 2)[0])
    if spec.kind == "vector":
        assert np.array_equal(load_dataset(name, 64, seed=1), x.numpy())


@pytest.mark.parametrize(("name", "cond"), [(n, c) for n, s in DATASETS.items() for c in s.conditionings])
def test_dataset_default_config_trains(name, cond):
    """The config a run on each set starts from is valid, and one training step on a few
    real samples gives a finite loss and an output shaped like the input."""
    cfg = for_dataset(name, cond)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=4, iterations=1))
    x, y, _ = _load(name, 8, 0)
    tr = Trainer(cfg, data=x[:8], labels=y[:8])
    assert np.isfinite(tr.train_step())
    with torch.no_grad():
        assert tr.model(x[:2], torch.tensor([5])).shape == x[:2].shape


def test_every_conditioning_a_set_lacks_is_refused():
    for name, spec in DATASETS.items():
        for cond in {"none", "class", "multi"} - set(spec.conditionings):
            with pytest.raises(ValueError, match=f"does not fit {name}"):
                for_dataset(name, cond)


# --- the package's layout ---------------------------------------------------------------------


def test_no_import_cycles():
    """No module of ddpmkit imports (at the top or inside a function) a module that imports it back."""
    root = Path(__file__).resolve().parents[1] / "ddpmkit"
    mods = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    deps.add(full if full in mods else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d in mods and d != mod and not mod.startswith(d + ".") and d != "ddpmkit"}
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in seen:
            return
        stack.append(m)
        for d in sorted(graph[m]):
            visit(d)
        stack.pop()
        seen.add(m)

    for m in sorted(graph):
        visit(m)


def test_one_build_model_serves_every_network():
    assert build_model(MLPConfig(kind="concat")).__class__.__name__ == "ConcatMLP"
    assert build_model(for_dataset("shapes").model).__class__.__name__ == "UNet"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_option_is_a_cli_flag(sampler):
    from ddpmkit.cli import build_parser

    for name, default in SAMPLERS[sampler].options.items():
        value = str(default)
        a = build_parser().parse_args(["sample", "run", "--out", "x.npy", "--sampler", sampler, f"--{name.replace('_', '-')}", value])
        assert getattr(a, name) == default
