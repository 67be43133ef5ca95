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
    fake = {"w": 0.17, "n": 20, "real_vs_real_fid": 1.0, "rows": [row]}
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
