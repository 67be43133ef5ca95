"""A folder of images as a data set (issue 12 §3): the layout rules, resizing and cropping,
the errors, a run that records its folder, the folder recipes, and the FID protocol.

The folders are the generated shapes set written as PNG files, as a user's would be."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.data import FolderConfig, dataset_spec, folder_config, load_image_folder, scan_image_folder
from ddpmkit.fid import InceptionWeightsMissing, fid_with_baseline, inception_weights
from ddpmkit.images import make_shapes
from ddpmkit.recipes import folder_64, for_dataset
from ddpmkit.train import RunConfig, load_run


def cli(*argv) -> int:
    """``ddpmkit ARGV``'s exit status; argparse's own refusals (status 2) included."""
    try:
        return main(list(map(str, argv)))
    except SystemExit as e:
        return e.code


def to_png(x: torch.Tensor) -> Image.Image:
    """(3, S, S) in [-1, 1] -> an RGB PIL image."""
    return Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))


def write_shapes(root, n=36, seed=0, classes=True):
    """The shapes set as PNG files: class subfolders by the number of shapes in the image
    ("1-shape", "2-shapes", "3-shapes"), or all in ``root`` itself. Returns the images."""
    d = make_shapes(n, seed=seed)
    for i, (x, y) in enumerate(zip(d.images, d.labels)):
        k = int(y.sum())
        where = root / (f"{k}-shape" + "s" * (k > 1)) if classes else root
        where.mkdir(parents=True, exist_ok=True)
        to_png(x).save(where / f"{i:03d}.png")
    return d


@pytest.fixture
def shapes_folder(tmp_path):
    root = tmp_path / "shapes"
    d = write_shapes(root)
    (root / "README.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "2-shapes" / "._007.png").write_bytes(b"\0\5\0\7 macOS resource fork")  # hidden: passed over, never opened
    return root, d


# --- layout -------------------------------------------------------------------------------


def test_class_subfolders_become_sorted_labels(shapes_folder):
    root, d = shapes_folder
    scan = scan_image_folder(root)
    assert scan.class_names == ("1-shape", "2-shapes", "3-shapes")
    counts = d.labels.sum(1).long()
    assert [scan.labels.count(k) for k in range(3)] == [int((counts == k + 1).sum()) for k in range(3)]
    assert [p.name for p in scan.skipped] == ["README.txt"]  # hidden files are not even counted
    data = load_image_folder(root, FolderConfig(image_size=32, class_names=scan.class_names))
    assert data.images.shape == (len(d.images), 3, 32, 32) and data.images.dtype == torch.float32
    # the round trip: PNG keeps 8 bits, so each pixel is back within one grey level
    order = [int(p.stem) for p in scan.files]
    assert (data.images - d.images[order]).abs().max() <= 1 / 127.5 + 1e-6
    assert torch.equal(data.labels, d.labels[order].sum(1).long() - 1)
    assert "36 images, 3 classes" in data.source and "1 non-image file(s) left out" in data.source


def test_flat_folder_and_single_subfolder_are_unconditional(tmp_path):
    write_shapes(tmp_path / "flat", n=5, classes=False)
    (tmp_path / "one" / "cats").mkdir(parents=True)
    for i in range(3):
        to_png(make_shapes(1, seed=i).images[0]).save(tmp_path / "one" / "cats" / f"{i}.jpg")
    for folder in ("flat", "one"):
        path, cfg = folder_config(tmp_path / folder)
        assert cfg.class_names == () and path == str((tmp_path / folder).resolve())
        run = for_dataset(str(tmp_path / folder), image_size=16)
        assert run.cond == "none" and run.model.num_classes is None and run.spec.shape == (3, 16, 16)
        assert load_image_folder(path, FolderConfig(image_size=16)).labels.eq(0).all()


@pytest.mark.parametrize("layout", ["empty", "only-text", "mixed", "missing", "file", "empty-class"])
def test_bad_layouts_are_named(tmp_path, layout):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "only-text":
        (root / "notes").mkdir()
        (root / "notes" / "a.txt").write_text("x")
    if layout == "mixed":
        write_shapes(root, n=4)
        to_png(make_shapes(1).images[0]).save(root / "stray.png")
    if layout == "file":
        root.rmdir()
        root.write_text("x")
    if layout == "empty-class":
        write_shapes(root, n=4)
        (root / "0-shapes").mkdir()
    expect = {"empty": "no images found in", "only-text": r"found 1 other file\(s\), e.g. notes/a.txt", "mixed": "stray.png",
              "missing": "does not exist", "file": "is a file", "empty-class": r"class subfolders without images \(0-shapes\)"}[layout]
    with pytest.raises((ValueError, FileNotFoundError), match=expect):
        scan_image_folder(root)
    assert cli("train", "--dataset", root, "--out", tmp_path / "run", "--iterations", "1", "--no-progress") == 2


def test_resize_shorter_side_then_centre_crop(tmp_path):
    """A 64×32 image, red | blue | green with the blue from x = 12 to 52: resized to 32×16 and
    cropped to its middle 16 columns (x = 16..48 of the original), it is blue only. Squashed
    instead of cropped, or cropped off-centre, it would show red or green."""
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :12] = (255, 0, 0)
    a[:, 12:52] = (0, 0, 255)
    a[:, 52:] = (0, 255, 0)
    (tmp_path / "f").mkdir()
    Image.fromarray(a).save(tmp_path / "f" / "wide.png")
    Image.fromarray(a.transpose(1, 0, 2).copy()).save(tmp_path / "f" / "tall.png")  # 32 wide, 64 tall: the same, turned
    x = load_image_folder(tmp_path / "f", FolderConfig(image_size=16)).images  # (2, 3, 16, 16)
    blue = torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1)
    assert torch.allclose(x, blue.expand_as(x), atol=1e-6)


def test_modes_become_rgb(tmp_path):
    (tmp_path / "f").mkdir()
    Image.fromarray(np.full((8, 8), 100, np.uint8), mode="L").save(tmp_path / "f" / "grey.png")
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black: lies on white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "f" / "clear.png")
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "f" / "palette.gif")
    x = load_image_folder(tmp_path / "f", FolderConfig(image_size=8)).images
    by_name = dict(zip(sorted(["clear", "grey", "palette"]), x))
    assert torch.allclose(by_name["grey"], torch.full((3, 8, 8), 100 / 127.5 - 1))
    assert torch.equal(by_name["clear"], torch.ones(3, 8, 8))
    assert torch.allclose(by_name["palette"], torch.full((3, 8, 8), 30 / 127.5 - 1))


def test_unreadable_files_are_all_named_and_nothing_changes(shapes_folder):
    root, _ = shapes_folder
    good = (root / "1-shape").iterdir().__next__()
    (root / "1-shape" / "broken.png").write_bytes(b"this is not a png")
    (root / "3-shapes" / "cut.png").write_bytes(good.read_bytes()[:60])  # a truncated PNG
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(ValueError) as e:
        load_image_folder(root, FolderConfig(image_size=32, class_names=("1-shape", "2-shapes", "3-shapes")))
    assert "2 of the 38 image files" in str(e.value)
    assert "1-shape/broken.png" in str(e.value) and "3-shapes/cut.png" in str(e.value) and "Remove or re-save" in str(e.value)
    assert before == {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_run_refuses_a_folder_whose_classes_changed(shapes_folder):
    root, _ = shapes_folder
    with pytest.raises(ValueError, match="classes under .* changed since the run recorded them"):
        load_image_folder(root, FolderConfig(image_size=32, class_names=("1-shape", "2-shapes")))


# --- runs ---------------------------------------------------------------------------------


def test_folder_run_trains_resumes_samples_and_exports_without_the_folder(shapes_folder, tmp_path, monkeypatch, capsys):
    from ddpmkit.pretrained import export_run, load_pretrained
    from ddpmkit.samplers import sample

    root, _ = shapes_folder
    run = tmp_path / "run"
    monkeypatch.chdir(root.parent)  # a relative --dataset is recorded as an absolute path
    assert main(["train", "--dataset", "shapes", "--out", str(run), "--iterations", "2", "--no-progress"]) == 0  # the registered name wins
    assert json.loads((run / "config.json").read_text())["dataset"] == "shapes"
    shutil.rmtree(run)
    assert main(["train", "--dataset", "./shapes", "--image-size", "16", "--out", str(run), "--iterations", "2", "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["dataset"] == str(root.resolve())
    assert saved["folder"] == {"image_size": 16, "class_names": ["1-shape", "2-shapes", "3-shapes"]}
    assert saved["cond"] == "class" and saved["model"]["num_classes"] == 3
    assert "image folder" in json.loads((run / "metadata.json").read_text())["data"]
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "--out", str(run), "--iterations", "4", "--no-progress"]) == 0  # from another folder
    assert load_run(run)[2].folder == FolderConfig(16, ("1-shape", "2-shapes", "3-shapes"))
    for label in ("2-shapes", "1"):
        assert main(["sample", str(run), "--n", "3", "--sampler", "ddim", "--steps", "2", "--label", label, "--out", str(tmp_path / "s.npy"),
                     "--no-progress"]) == 0
        assert np.load(tmp_path / "s.npy").shape == (3, 3, 16, 16)
    assert main(["sample", str(run), "--n", "2", "--label", "4-shapes", "--out", str(tmp_path / "x.npy"), "--no-progress"]) == 2
    assert "one of its classes (1-shape, 2-shapes, 3-shapes)" in capsys.readouterr().err
    export_run(run, "mine", out_dir=tmp_path / "ckpt")
    shutil.rmtree(root)  # the folder is gone: the run and the export still sample
    model, sched, info = load_pretrained("mine", directory=tmp_path / "ckpt")
    cfg = RunConfig.from_dict(info["config"])
    assert cfg.spec.shape == (3, 16, 16) and cfg.folder.class_names == ("1-shape", "2-shapes", "3-shapes")
    assert load_run(run)[2].spec.num_classes == 3
    out = sample("ddim", lambda x, t: model(x, t, torch.zeros(len(x), dtype=torch.long)), sched, (2, *cfg.spec.shape), steps=2)
    assert out.x.shape == (2, 3, 16, 16) and torch.isfinite(out.x).all()
    assert main(["train", "--resume", "--out", str(run), "--iterations", "6", "--no-progress"]) == 2  # resuming needs the data
    assert "does not exist" in capsys.readouterr().err


def test_folder_recipe_is_the_reports_setup(shapes_folder):
    root, _ = shapes_folder
    cfg = folder_64(str(root))
    t = cfg.train
    assert (t.iterations, t.batch_size, t.lr, t.warmup, t.predictor, t.seed) == (50_000, 16, 2e-4, 200, "x0", 63)
    assert (cfg.schedule.name, cfg.schedule.T, cfg.schedule.beta_1, cfg.schedule.beta_T) == ("linear", 1000, 1e-4, 0.02)
    assert cfg.spec.shape == (3, 64, 64) and cfg.folder.image_size == 64 and cfg.model.num_classes == 3
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible by 8"):
        folder_64(str(root), image_size=36)  # four levels halve it three times


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "folder-64"], "pass --dataset PATH"),
    (["--dataset", "mnist", "--image-size", "32"], "drop --image-size"),
    (["--recipe", "mnist-cfg", "--image-size", "32"], "drop --image-size"),
    (["--dataset", "{root}", "--image-size", "30"], "divisible by 4"),
    (["--dataset", "{root}", "--n-train", "10"], "fixed set"),
    (["--dataset", "nowhere/at/all"], "no folder exists at that path"),
])  # fmt: skip
def test_folder_flags_that_cannot_apply_are_refused(shapes_folder, tmp_path, capsys, argv, message):
    root, _ = shapes_folder
    argv = [a.replace("{root}", str(root)) for a in argv]
    assert cli("train", *argv, "--out", tmp_path / "run", "--iterations", "1", "--no-progress") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- the FID protocol ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluator():
    from ddpmkit.pretrained import load_pretrained

    return load_pretrained("shapes-evaluator")[0]


def test_fid_baseline_is_disjoint_and_like_for_like(evaluator):
    real = make_shapes(300, seed=5).images
    res = fid_with_baseline(real[:50], real[50:], classifier=evaluator, seed=3)
    assert (res.n_samples, res.n_baseline, res.n_reference) == (50, 50, 200)
    # samples drawn from the same distribution score like the baseline; noise scores far worse
    noise = fid_with_baseline(torch.rand(50, 3, 32, 32) * 2 - 1, real[50:], classifier=evaluator, seed=3)
    assert noise.real_vs_real == pytest.approx(res.real_vs_real)  # same split: the baseline does not depend on the samples
    assert res.fid < 2 * res.real_vs_real and noise.fid > 5 * res.real_vs_real
    # the baseline set is the first k of the seeded shuffle: scoring exactly those as samples gives the baseline
    perm = torch.randperm(250, generator=torch.Generator().manual_seed(3))
    same = fid_with_baseline(real[50:][perm[:50]], real[50:], classifier=evaluator, seed=3)
    assert same.fid == pytest.approx(same.real_vs_real, rel=1e-9)
    small = fid_with_baseline(real[:200], real[200:260], classifier=evaluator)
    assert (small.n_baseline, small.n_reference) == (30, 30)  # too few real images: half and half, and said so by the counts
    assert "30 held-out real images" in str(small)


def test_fid_refuses_what_it_cannot_score(evaluator):
    real = make_shapes(40, seed=1).images
    with pytest.raises(ValueError, match="reads images of shape"):
        fid_with_baseline(real[:, :, :16, :16], real[:, :, :16, :16], classifier=evaluator)
    with pytest.raises(ValueError, match="NaN"):
        fid_with_baseline(torch.full((4, 3, 32, 32), float("nan")), real, classifier=evaluator)
    with pytest.raises(ValueError, match="one image shape"):
        fid_with_baseline(real[:, :1], real, classifier=evaluator)
    with pytest.raises(ValueError, match="at least 2 samples and 4 real"):
        fid_with_baseline(real[:1], real, classifier=evaluator)


def test_inception_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPMKIT_INCEPTION", raising=False)
    monkeypatch.setenv("DDPMKIT_DATA", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(InceptionWeightsMissing) as e:
        inception_weights()
    msg = str(e.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and "https://github.com/toshas/torch-fidelity" in msg
    assert "DDPMKIT_INCEPTION" in msg and str(tmp_path / "inception") in msg and "--features classifier" in msg
    with pytest.raises(InceptionWeightsMissing):
        fid_with_baseline(torch.zeros(4, 3, 8, 8), torch.zeros(8, 3, 8, 8), features="inception")


def test_inception_fid_runs_from_a_weights_file_on_disk(tmp_path, monkeypatch):
    """The real code path with stand-in weights (random, of the right shapes): torchmetrics
    builds torch-fidelity's network from the file; any attempt to download fails the test."""
    pytest.importorskip("torch_fidelity")
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def no_download(*a, **k):
        raise AssertionError("tried to download the Inception weights")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    with mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None), mock.patch.object(fe.torch, "load", lambda *a, **k: {}):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(net.state_dict(), weights)
    monkeypatch.setenv("DDPMKIT_INCEPTION", str(weights))
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(8, 1, 16, 16, generator=g) * 2 - 1, torch.rand(4, 1, 16, 16, generator=g) * 2 - 1  # grey images: 3 channels made
    res = fid_with_baseline(fake, real, features="inception")
    assert np.isfinite(res.fid) and np.isfinite(res.real_vs_real) and "Inception-v3" in res.features
    assert (res.n_samples, res.n_baseline, res.n_reference) == (4, 4, 4)


def test_fid_cli_on_a_folder_with_its_own_evaluator(shapes_folder, tmp_path, capsys):
    root, _ = shapes_folder
    ev = tmp_path / "ev"
    assert main(["train", "--recipe", "folder-evaluator", "--dataset", str(root), "--image-size", "32", "--out", str(ev), "--no-progress"]) == 0
    meta = json.loads((ev / "folder-evaluator.json").read_text())
    assert meta["config"]["num_outputs"] == 3 and "task: classes" in meta["metadata"]["data"]
    capsys.readouterr()
    np.save(tmp_path / "s.npy", ((make_shapes(12, seed=9).images + 1) / 2).numpy())
    assert main(["fid", str(tmp_path / "s.npy"), "--dataset", str(root), "--classifier", str(ev / "folder-evaluator.safetensors")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["n_samples"], res["n_baseline"], res["n_reference"]) == (12, 12, 24) and res["fid"] > 0 and res["real_vs_real"] > 0
    assert "image folder" in res["real"] and res["evaluator"].endswith("folder-evaluator.safetensors")
    # a folder of sample images scores like the same images as .npy
    write_shapes(tmp_path / "samples", n=12, seed=9, classes=False)
    assert main(["fid", str(tmp_path / "samples"), "--dataset", str(root), "--classifier", str(ev / "folder-evaluator.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(res["fid"], rel=1e-3)
    for argv, message in (
        ([], "needs an evaluator: train one with ddpmkit train --recipe folder-evaluator"),
        (["--classifier", "mnist-classifier"], "reads images of shape (1, 28, 28)"),
        (["--features", "inception", "--classifier", "x"], "drop it"),
    ):
        assert main(["fid", str(tmp_path / "s.npy"), "--dataset", str(root), *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["fid", str(tmp_path / "s.npy"), "--dataset", "digits8x8"]) == 2
    assert "no evaluator ships for digits8x8: pass --classifier" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", make_shapes(4).images.numpy())  # [-1, 1], not pixel values
    assert main(["fid", str(tmp_path / "wrong.npy"), "--dataset", "shapes"]) == 2
    assert "must be pixel values in [0, 1]" in capsys.readouterr().err


def test_fid_cli_shapes_default_evaluator(tmp_path, capsys):
    np.save(tmp_path / "s.npy", ((make_shapes(20, seed=3).images + 1) / 2).numpy())
    assert main(["fid", str(tmp_path / "s.npy"), "--dataset", "shapes", "--n-real", "100"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["evaluator"] == "shapes-evaluator" and (res["n_samples"], res["n_reference"], res["n_baseline"]) == (20, 100, 20)


def test_unlabelled_folder_evaluator_learns_rotations(tmp_path):
    from sklearn.datasets import load_digits

    from ddpmkit.pretrained import train_evaluator

    (tmp_path / "flat").mkdir()
    for i, digit in enumerate(load_digits().images[:400]):  # digits have an up and a down; circles and squares do not
        Image.fromarray((digit * 255 / 16).astype(np.uint8)).resize((16, 16)).save(tmp_path / "flat" / f"{i}.png")
    clf, meta = train_evaluator("folder-evaluator", dataset=str(tmp_path / "flat"), image_size=16, progress=False)
    assert clf.config.num_outputs == 4 and "rotation" in meta["data"] and meta["held_out"]["accuracy"] >= 0.6  # chance: 0.25
    with pytest.raises(ValueError, match="folder-evaluator"):
        train_evaluator("shapes-evaluator", dataset=str(tmp_path / "flat"))
    assert dataset_spec(str(tmp_path / "flat"), FolderConfig(16)).shape == (3, 16, 16)
