"""The benchmark scripts' own command lines (their measurements run outside the test suite)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [module.__name__, *map(str, args)])
    module.main()


def test_bench_samplers_skip_2d_replaces_only_the_mnist_part(tmp_path, monkeypatch, capsys):
    bench = load_script("bench_samplers")
    row = {"sampler": "ddim", "nfe": 10, "fid": 2.0, "accuracy": 1.0, "seconds_per_image": 0.1}
    fake = {"w": 0.17, "interval": [0, 600], "n": 20, "real_vs_real_fid": 1.0, "rows": [row]}
    monkeypatch.setattr(bench, "mnist", lambda per_class, progress: fake)
    monkeypatch.setattr(bench, "two_d", lambda *a, **k: pytest.fail("--skip-2d must not run the 2-D part"))
    out = tmp_path / "samplers.json"
    out.write_text(json.dumps({"machine": "m", "two_d": {"runs": {"a": 1}}, "mnist": {"w": 0.5}}))
    run_main(bench, monkeypatch, "--skip-2d", "--out", out)
    result = json.loads(out.read_text())
    assert result["two_d"] == {"runs": {"a": 1}} and result["machine"] == "m" and result["mnist"] == fake


@pytest.mark.parametrize("args, message", [
    (["--skip-2d", "--skip-mnist"], "leave nothing to measure: drop one"),
    (["--skip-2d"], "there is none: run without --skip-2d"),
])  # fmt: skip
def test_bench_samplers_refuses_what_it_cannot_do(tmp_path, monkeypatch, capsys, args, message):
    bench = load_script("bench_samplers")
    with pytest.raises(SystemExit) as e:
        run_main(bench, monkeypatch, *args, "--out", tmp_path / "missing.json")
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_guidance_pools_seeds_caches_draws_and_chooses_by_the_rule(tmp_path, monkeypatch, capsys):
    """On a tiny stand-in for mnist-cfg: every spec's row pools the draws of every seed, each
    draw equals guided_samples with its w and interval, a second run reads the cache instead
    of sampling, and the chosen spec is choose_guidance's."""
    import torch

    from ddpmkit import NoiseSchedule
    from ddpmkit.classifier import ImageClassifier
    from ddpmkit.experiments.images import choose_guidance, guided_samples
    from ddpmkit.images import ImageData
    from ddpmkit.unet import UNet, UNetConfig

    bench = load_script("bench_guidance")
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mults=(1,), attn_levels=(), num_classes=10)).eval()
    sched = NoiseSchedule.create("linear", 1000)
    clf = ImageClassifier().eval()
    info = {"metadata": {"steps": 7}}
    monkeypatch.setattr(bench, "load_pretrained", lambda name: (net, sched, info) if name == "mnist-cfg" else (clf, None, {}))
    held = ImageData(torch.rand(1000, 1, 28, 28) * 2 - 1, torch.zeros(1000), "fake")
    monkeypatch.setattr(bench, "load_mnist", lambda split, warn: held)
    monkeypatch.setattr(bench, "PER_CLASS", 2)
    monkeypatch.setattr(bench, "guided_samples", lambda *a, **k: guided_samples(*a, **{**k, "steps": 2}))  # 2 DDIM steps, not 50
    out, cache = tmp_path / "g.json", tmp_path / "cache"
    run_main(bench, monkeypatch, "0", "1:0:500", "--seeds", "0", "1", "--cache", cache, "--out", out)
    result = json.loads(out.read_text())
    assert [r["spec"] for r in result["rows"]] == ["0", "1:0:500"] and all(r["n"] == 40 for r in result["rows"])
    assert result["rows"][1]["interval"] == [0, 500] and result["checkpoint_steps"] == 7
    assert result["chosen"] == choose_guidance(result["rows"])["spec"]
    want = guided_samples(net, sched, torch.arange(10).repeat_interleave(2), 1.0, steps=2, seed=1, interval=(0, 500))
    assert torch.equal(torch.load(cache / "1:0:500_seed1.pt"), want)
    monkeypatch.setattr(bench, "guided_samples", lambda *a, **k: pytest.fail("cached draws must not be sampled again"))
    run_main(bench, monkeypatch, "0", "1:0:500", "--seeds", "0", "1", "--cache", cache, "--out", out)
    assert json.loads(out.read_text())["rows"] == result["rows"]
    capsys.readouterr()
    for bad in ["0.2:600", "0.2:600:0", "x", "0.2:0:600:9", "0.2:-1:5"]:  # refused before any sampling
        with pytest.raises(SystemExit) as e:
            run_main(bench, monkeypatch, bad, "--cache", cache)
        assert e.value.code == 2 and "a spec is W or W:LO:HI" in capsys.readouterr().err
