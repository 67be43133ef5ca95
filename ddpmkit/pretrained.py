"""Small pretrained checkpoints shipped inside the package (``ddpmkit/checkpoints/``).

Each is a pair: ``NAME.safetensors`` (weights only; safetensors cannot carry code) and
``NAME.json`` (kind, config, metadata: data actually used, steps, seed, wall time,
hardware, and for guided models the book's chosen guidance weight). ``load_pretrained``
reads them; ``export_run`` makes one from a training run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .checkpoint import _atomic_write, load_state, save_json
from .schedules import NoiseSchedule

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MAX_BYTES = 10 * 1024 * 1024  # every shipped checkpoint stays under 10 MB


def available() -> list[str]:
    """Names of the shipped checkpoints."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.json"))


def _save_weights(state: dict, path: Path) -> None:
    """Write tensors as safetensors, atomically (the same mechanism as every checkpoint)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    _atomic_write(path, lambda f: f.write(save(tensors)))
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB, over the 10 MB limit for shipped checkpoints")


def export_run(run_dir: str | Path, name: str, extra: dict | None = None, out_dir: Path = CHECKPOINT_DIR) -> Path:
    """Write the EMA weights of a run as ``NAME.safetensors`` plus ``NAME.json``."""
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    meta = json.loads((run_dir / "metadata.json").read_text())
    state = load_state(run_dir / "checkpoint.pt")
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_weights(state["ema"] if state.get("ema") is not None else state["model"], out_dir / f"{name}.safetensors")
    curve = loss_curve(state["losses"].tolist())
    save_json({"kind": "diffusion", "config": cfg, "metadata": meta, "loss_curve": curve, **(extra or {})}, out_dir / f"{name}.json")
    return out_dir / f"{name}.safetensors"


def loss_curve(losses: list[float], window: int = 50) -> dict:
    """The training curve, kept small: the mean loss of each ``window`` consecutive steps.
    Returns ``{"step": [...], "loss": [...]}`` (step = the last step of each window)."""
    steps, means = [], []
    for i in range(0, len(losses) - window + 1, window):
        steps.append(i + window)
        means.append(round(sum(losses[i : i + window]) / window, 6))
    return {"step": steps, "loss": means}


def export_module(model: torch.nn.Module, name: str, kind: str, config: dict, metadata: dict, out_dir: Path = CHECKPOINT_DIR) -> Path:
    """Write any module's weights as ``NAME.safetensors`` plus ``NAME.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_weights(model.state_dict(), out_dir / f"{name}.safetensors")
    save_json({"kind": kind, "config": config, "metadata": metadata}, out_dir / f"{name}.json")
    return out_dir / f"{name}.safetensors"


def read_info(name: str, directory: Path = CHECKPOINT_DIR) -> dict:
    """The JSON side of a shipped checkpoint."""
    path = directory / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped checkpoint named {name!r}; available: {', '.join(available()) or 'none'}")
    return json.loads(path.read_text())


def load_pretrained(name: str, device: str = "cpu", directory: Path = CHECKPOINT_DIR):
    """Load a shipped checkpoint. Returns ``(model, schedule_or_None, info)``."""
    info = read_info(name, directory)
    weights = load_file(str(directory / f"{name}.safetensors"), device=device)
    if info["kind"] == "diffusion":
        from .train import RunConfig, build_model

        cfg = RunConfig.from_dict(info["config"])
        model = build_model(cfg.model)
        model.load_state_dict(weights)
        return model.to(device).eval(), NoiseSchedule.from_config(cfg.schedule), info
    if info["kind"] == "classifier":
        from .classifier import ClassifierConfig, ImageClassifier

        model = ImageClassifier(ClassifierConfig.from_dict(info["config"]))
        model.load_state_dict(weights)
        return model.to(device).eval(), None, info
    raise ValueError(f"{name}.json has unknown kind {info['kind']!r}")
