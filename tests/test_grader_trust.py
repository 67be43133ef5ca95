"""The grader an instructor can trust: a second battery of submissions to all five
assignments, each with its exact points and message (issue 9).

1. a correct answer never loses a point (helpers, stand-ins, magics, feedback);
2. only the student's own work earns points (the library withheld, forged streams, copies, links);
3. no submission takes the class run down (odd paths, RAM disks, one time budget, reproducible);
4. exports for Gradescope and Canvas.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from grading_notebooks import MODE, msgs, needs_bwrap, notebook, pts
from grading_variants import CORRECT

from ddpmkit.grading.assignments import ASSIGNMENTS, hidden_cases
from ddpmkit.grading.grader import grade_batch, grade_submission, skeleton
from ddpmkit.grading.notebooks import grading_meta
from ddpmkit.grading.sandbox import Limits
from ddpmkit.grading.sanitize import sanitized_root
from ddpmkit.grading.spec import SELF_CHECK_SEED, Toy, case_key, materialize

LIMITS = Limits(timeout=60, question_timeout=15)


BLANK = {"q_sample": "def q_sample(x0, t, noise, betas):\n    raise NotImplementedError\n",
         "cosine_betas": "def cosine_betas(T, s=0.008):\n    raise NotImplementedError\n",
         "q_posterior_mean_variance": "def q_posterior_mean_variance(x0, x_t, t, betas):\n    raise NotImplementedError\n"}
LIB = "the function you are asked to write"

# ---- A1 ---------------------------------------------------------------------------------------
A1 = {
    # 1. correct answers, written differently
    "magic_indented": {"q_sample": """def q_sample(x0, t, noise, betas):
    %time
    abar = torch.cumprod(1 - betas, 0)[t].reshape(-1, *([1] * (x0.dim() - 1)))
    if True:
        !echo hi
    return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).float()
"""},
    "float32": {"q_sample": """def q_sample(x0, t, noise, betas):
    abar = torch.cumprod(1 - betas.float(), 0)[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
"""},
    # feedback that points at the bug
    "lookalike": {"q_sample": "def q_s\u0430mple(x0, t, noise, betas):\n    return x0\n"},
    "mutates": {"q_sample": """def q_sample(x0, t, noise, betas):
    abar = torch.cumprod(1 - betas, 0)[t].reshape(-1, *([1] * (x0.dim() - 1))).float()
    x0.mul_(abar.sqrt())
    return x0 + (1 - abar).sqrt() * noise
"""},
    "too_large": {"q_sample": "def q_sample(x0, t, noise, betas):\n    return torch.zeros(9000, 1000, 2)\n"},
    "python_float": {"q_sample": "def q_sample(x0, t, noise, betas):\n    return 0.5\n"},
    "float16": {"q_sample": """def q_sample(x0, t, noise, betas):
    abar = torch.cumprod(1 - betas, 0)[t].reshape(-1, *([1] * (x0.dim() - 1))).half()
    return (abar.sqrt() * x0.half() + (1 - abar).sqrt() * noise.half()).float()
"""},
    # 2. the library, by every path
    "lib_lambda": {**BLANK, "q_sample": "import ddpmkit, torch\nfrom ddpmkit.schedules import NoiseSchedule\nq_sample = lambda x0, t, n, b: ddpmkit.q_sample(NoiseSchedule(b), x0, t, n).float()\n"},
    "lib_def": {"q_sample": "from ddpmkit.diffusion import q_sample as lib\nfrom ddpmkit.schedules import NoiseSchedule\ndef q_sample(x0, t, noise, betas):\n    return lib(NoiseSchedule(betas), x0, t, noise).float()\n"},
    "lib_importlib": {"cosine_betas": "import importlib\ndef cosine_betas(T, s=0.008):\n    return importlib.import_module('ddpmkit.schedules').make_betas('cosine', T, cosine_s=s)\n"},
    "lib_getattr": {"cosine_betas": "import ddpmkit\ndef cosine_betas(T, s=0.008):\n    return getattr(getattr(ddpmkit, 'sched' + 'ules'), 'make' + '_betas')('cosine', T, cosine_s=s)\n"},
    "lib_partial": {"cosine_betas": "import functools\nfrom ddpmkit.schedules import make_betas\n_f = functools.partial(make_betas, 'cosine')\ndef cosine_betas(T, s=0.008):\n    return _f(T, cosine_s=s)\n"},
    "lib_dunder_import": {"cosine_betas": "def cosine_betas(T, s=0.008):\n    return __import__('ddpmkit.schedules', fromlist=['x']).make_betas('cosine', T, cosine_s=s)\n"},
    "lib_module_renamed": {"cosine_betas": "from ddpmkit.schedules import make_betas as cosine_betas0\ndef cosine_betas(T, s=0.008):\n    return cosine_betas0('cosine', T, cosine_s=s)\ncosine_betas.__module__ = '__main__'\n"},
    "lib_code_copied": {"cosine_betas": "import ddpmkit.schedules\ndef cosine_betas(name, T, **kw):\n    pass\ncosine_betas.__code__ = ddpmkit.schedules.make_betas.__code__\n_f = cosine_betas\ndef cosine_betas(T, s=0.008):\n    return _f('cosine', T, cosine_s=s)\n"},
    "lib_source_exec": {"cosine_betas": "import inspect, ddpmkit.schedules as S\nns = dict(vars(S))\nexec(inspect.getsource(S), ns)\ndef cosine_betas(T, s=0.008):\n    return ns['make_betas']('cosine', T, cosine_s=s)\n"},
    "lib_posterior_attrs": {"q_posterior_mean_variance": "from ddpmkit.schedules import NoiseSchedule\ndef q_posterior_mean_variance(x0, x_t, t, betas):\n    s = NoiseSchedule(betas)\n    return (s.posterior_mean_coef1[t][:, None] * x0 + s.posterior_mean_coef2[t][:, None] * x_t).float(), s.posterior_variance[t].float()\n"},
    # copies of the reference solution are flagged, not scored as original
    "copied": {"q_posterior_mean_variance": """import torch
def q_posterior_mean_variance(a0, b0, idx, bb):
    '''mine'''
    al = 1.0 - bb
    ab = torch.cumprod(al, dim=0)
    abp = torch.cat([ab.new_ones(1), ab[:-1]])
    k1 = abp.sqrt() * bb / (1.0 - ab)  # (T,) coefficient of x0
    k2 = al.sqrt() * (1.0 - abp) / (1.0 - ab)
    v = (1.0 - abp) / (1.0 - ab) * bb
    sh = (-1, *([1] * (b0.dim() - 1)))
    m = k1[idx].reshape(sh) * a0 + k2[idx].reshape(sh) * b0
    return m.to(b0.dtype), v[idx].to(b0.dtype)
"""},
    # memorised self-check answers
    "memorised": {"cosine_betas": None},
    # reproducible: randomness inside an answer is seeded from the grading seed
    "random": {"cosine_betas": """_real = cosine_betas
import random, numpy as np
def cosine_betas(T, s=0.008):
    if random.random() + np.random.rand() + torch.rand(()).item() > 1.5:
        return _real(T, s) * 2
    return _real(T, s)
"""},
}
A1_ADDED = {
    "forge_stream": [BLANK["q_sample"] + BLANK["cosine_betas"] + BLANK["q_posterior_mean_variance"], """
import json, os, struct
def frame(h):
    b = json.dumps(dict(h, arrays=[])).encode()
    return struct.pack(">I", len(b)) + b
for fd in map(int, os.listdir('/proc/self/fd')):
    for q in ('q_sample', 'cosine_betas', 'q_posterior_mean_variance'):
        for k in range(3):
            try:
                os.write(fd, frame({'t': 'result', 'nonce': '0' * 32, 'q': q, 'case': k, 'module': '__main__', 'types': []}))
            except OSError:
                pass
"""],
    "junk_frames": ["""
import os, struct
deep = b'[' * 100000 + b']' * 100000
for body in (b'[1, 2]', deep, b'{"t": "result", "q": ["unhashable"], "case": {}, "nonce": [], "arrays": [["<f4", [99999999], 4]]}'):
    for fd in map(int, os.listdir('/proc/self/fd')):
        try:
            os.write(fd, struct.pack('>I', len(body)) + body)
        except OSError:
            pass
"""],
    "tmp_bomb": ["""
import os
st = os.statvfs('/tmp')
print('TMPSIZE', st.f_blocks * st.f_frsize >> 20)
try:
    for i in range(16):
        with open(f'/tmp/big{i}', 'wb') as f:
            for _ in range(128):
                f.write(b'x' * 2**20)
except OSError as exc:
    print('TMP', exc.errno)
"""],
    "work_bomb": ["""
written = 0
try:
    for i in range(64):
        with open(f'f{i}', 'wb') as f:
            for _ in range(64):
                f.write(b'x' * 2**20)
                written += 1
except OSError as exc:
    print('WORK', exc.errno, written)
"""],
    "setup_edited": [],
    "neighbours": ["""
import os
print('PROCS', sorted(os.listdir('/proc')), 'PID', os.getpid())
print('TMPFILES', [f for f in os.listdir('/tmp') if not os.path.isdir('/tmp/' + f)], 'WORKFILES', os.listdir('.'))
caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'CapBnd'))]
print('CAPS', caps)
hits = []
for pid in range(2, 4000):
    try:
        os.kill(pid, 0)
        hits.append(pid)
    except OSError:
        pass
print('SIGNALLABLE', hits)
"""],
}


def _memorised_source() -> str:
    q = ASSIGNMENTS["a1"].question("cosine_betas")
    table = {c.args: q.reference(*c.args).tolist() for c in q.cases(np.random.default_rng(SELF_CHECK_SEED))}
    return f"_TABLE = {table!r}\ndef cosine_betas(T, s=0.008):\n    return torch.tensor(_TABLE[(T, s)], dtype=torch.float64)\n"


def _edit_setup(nb):
    for c in nb.cells:
        if grading_meta(c).get("kind") == "setup":
            c.source += "\nPI = 3.0\n"


A2 = {
    "bad_step_good_loop": {"p_sample": "def p_sample(model, x_t, t, z, betas):\n    return x_t\n"},
    "noise_at_zero": {"p_sample": """def p_sample(model, x_t, t, z, betas):
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0)
    eps = model(x_t, torch.full((x_t.shape[0],), t))
    return (x_t - b[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt() + b[t].sqrt() * z
"""},
    "loss_float": {"ddpm_loss": """def ddpm_loss(model, x0, t, noise, betas):
    abar = torch.cumprod(1 - betas, 0)[t].float()[:, None]
    return float(((noise - model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t)) ** 2).mean())
"""},
    "loss_detached": {"ddpm_loss": """def ddpm_loss(model, x0, t, noise, betas):
    abar = torch.cumprod(1 - betas, 0)[t].float()[:, None]
    with torch.no_grad():
        return ((noise - model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t)) ** 2).mean()
"""},
    "lib_subclass": {"TimeLinear": """import ddpmkit.models
class TimeLinear(ddpmkit.models.TimeLinear):
    def __init__(self, dim_in, dim_out):
        super().__init__(dim_in, dim_out)
"""},
}
A3 = {
    "sin_float64": {"sinusoidal_embedding": """def sinusoidal_embedding(t, dim):
    half = dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    a = t.double()[:, None] * w[None]
    return torch.cat([a.cos(), a.sin(), torch.zeros(len(t), dim % 2, dtype=torch.float64)], 1).float()
"""},
    "sin_pow": {"sinusoidal_embedding": """def sinusoidal_embedding(t, dim):
    h = dim // 2
    a = t[:, None].float() * 10000 ** (-torch.arange(h).float() / h)
    return torch.cat([torch.cos(a), torch.sin(a), torch.zeros(len(t), dim % 2)], 1)
"""},
    "bad_sin_good_embedding": {"sinusoidal_embedding": "def sinusoidal_embedding(t, dim):\n    return torch.zeros(len(t), dim)\n"},
}
A4 = {
    "cfg_none": {"cfg_eps": "def cfg_eps(model, x, t, y, w):\n    c = model(x, t, y)\n    return c + w * (c - model(x, t, None))\n"},
    "cfg_nolabel": {"cfg_eps": "def cfg_eps(model, x, t, y, w):\n    return (1 + w) * model(x, t, y) - w * model(x, t)\n"},
    "bad_cfg_good_sampler": {"cfg_eps": "def cfg_eps(model, x, t, y, w):\n    return model(x, t, y)\n"},
    "lib_cfgmodel": {"cfg_eps": "from ddpmkit.guidance import CFGModel\ndef cfg_eps(model, x, t, y, w):\n    return CFGModel(model, y, w)(x, t)\n"},
}

A5 = {
    "cg_backward": {"classifier_guided_eps": """def classifier_guided_eps(model, classifier, x, t, y, scale, betas):
    x_in = x.clone().requires_grad_(True)
    with torch.enable_grad():
        F.log_softmax(classifier(x_in, t), dim=1).gather(1, y[:, None]).sum().backward()
    s = (1 - torch.cumprod(1 - betas.float(), 0)[t]).sqrt().view(-1, *([1] * (x.dim() - 1)))
    return model(x, t).detach() - scale * s * x_in.grad
"""},
    "kl_distributions": {"kl_term": CORRECT["kl_term"][1]},  # torch.distributions.kl_divergence
    "lib_guided_model": {"classifier_guided_eps": """from ddpmkit.guidance import ClassifierGuidedModel
from ddpmkit.schedules import NoiseSchedule
def classifier_guided_eps(model, classifier, x, t, y, scale, betas):
    return ClassifierGuidedModel(model, classifier, y, scale, NoiseSchedule(betas))(x, t)
"""},
    "lib_ddim_coefficients": {"ddim_step": """from ddpmkit.samplers import ddim_coefficients
def ddim_step(model, x_t, t, t_prev, eta, z, betas):
    abar = torch.cumprod(1 - betas, 0)
    a, ap = abar[t], (abar[t_prev] if t_prev >= 0 else torch.ones((), dtype=abar.dtype))
    eps = model(x_t, torch.full((x_t.shape[0],), t))
    c_x0, c_eps, sig = (c.float() for c in ddim_coefficients(a, ap, eta))
    return c_x0 * (x_t - (1 - a).sqrt().float() * eps) / a.sqrt().float() + c_eps * eps + sig * z
"""},
}


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    paths, fbs = {}, {}
    A1["memorised"]["cosine_betas"] = _memorised_source()
    for key, subs in [("a1", A1), ("a2", A2), ("a3", A3), ("a4", A4), ("a5", A5)]:
        paths[key] = [notebook(tmp, key, name, replace=rep) for name, rep in subs.items()]
    for name, cells in A1_ADDED.items():
        if name == "forge_stream":
            paths["a1"].append(notebook(tmp, "a1", name, replace={"q_sample": cells[0], "cosine_betas": "", "q_posterior_mean_variance": ""}, add=cells[1:]))
        else:
            paths["a1"].append(notebook(tmp, "a1", name, add=cells, edit=_edit_setup if name == "setup_edited" else None))
    good = paths["a1"][1]
    odd = tmp / "a1"
    (odd / "linked.ipynb").symlink_to(good)
    (odd / "zero.ipynb").symlink_to("/dev/zero")
    (odd / "dangling.ipynb").symlink_to(odd / "nowhere.ipynb")
    os.mkfifo(odd / "fifo.ipynb")
    (odd / "folder.ipynb").mkdir()
    with open(odd / "sparse.ipynb", "wb") as f:
        f.truncate(3 << 30)
    (odd / "nested.ipynb").write_bytes(b'{"nbformat": 4, "x": ' + b"[" * 100000 + b"]" * 100000 + b"}")
    paths["a1"] += [odd / f"{n}.ipynb" for n in ("linked", "zero", "dangling", "fifo", "folder", "sparse", "nested")]
    rows = {}
    for key, ps in paths.items():
        out = tmp / f"{key}.csv"
        rows[key] = grade_batch(key, ps, out, jobs=2, limits=LIMITS, isolation=MODE, seed=11, progress=False,
                                exports=("gradescope", "canvas") if key == "a1" else ())
        for p in ps:
            fbs[(key, p.stem)] = json.loads((tmp / f"{key}-feedback" / f"{p.stem}.json").read_text())
    return {"fb": fbs, "rows": rows, "tmp": tmp, "paths": paths}


F1 = {"q_sample": 3, "cosine_betas": 3, "q_posterior_mean_variance": 3}
F2 = {"TimeLinear": 3, "ddpm_loss": 3, "p_sample": 3, "p_sample_loop": 3, "chamfer": 3}
F3 = {"sinusoidal_embedding": 3, "ConditionEmbedding": 3, "ResBlock": 3, "reverse_step": 6}
F4 = {"cfg_eps": 3, "guided_sample": 3, "classify": 3}
F5 = {"ddim_step": 4, "kl_term": 3, "classifier_guided_eps": 3}


@needs_bwrap
class TestCorrectAnswersKeepTheirPoints:
    @pytest.mark.parametrize("key, name, full", [("a1", "magic_indented", F1), ("a1", "float32", F1), ("a3", "sin_float64", F3),
                                                 ("a3", "sin_pow", F3), ("a4", "cfg_none", F4), ("a4", "cfg_nolabel", F4),
                                                 ("a5", "cg_backward", F5), ("a5", "kl_distributions", F5)])
    def test_full_marks(self, trust, key, name, full):
        assert pts(trust["fb"][(key, name)]) == full

    @pytest.mark.parametrize("key, name, bad, left, user, helper", [
        ("a2", "bad_step_good_loop", "p_sample", 0, "p_sample_loop", "p_sample"),
        ("a3", "bad_sin_good_embedding", "sinusoidal_embedding", 0, "ConditionEmbedding", "sinusoidal_embedding"),
        ("a4", "bad_cfg_good_sampler", "cfg_eps", 1, "guided_sample", "cfg_eps")])  # unguided is right at w = 0 (case 1)
    def test_one_bug_costs_one_question(self, trust, key, name, bad, left, user, helper):
        fb = trust["fb"][(key, name)]
        full = {"a2": F2, "a3": F3, "a4": F4}[key]
        assert pts(fb) == {**full, bad: left}
        assert f"graded with the reference {helper} in place of yours" in msgs(fb, user)

    def test_the_last_step_adds_no_noise(self, trust):
        fb = trust["fb"][("a2", "noise_at_zero")]
        assert pts(fb) == {**F2, "p_sample": 2}
        assert [c["ok"] for c in fb["questions"]["p_sample"]["cases"]] == [True, False, True]

    def test_setup_edits_are_reported(self, trust):
        fb = trust["fb"][("a1", "setup_edited")]
        assert pts(fb) == F1 and any("setup cell setup-0 (cell" in n and "were not run" in n for n in fb["notes"])


@needs_bwrap
class TestFeedbackPointsAtTheBug:
    def test_lookalike_name(self, trust):
        fb = trust["fb"][("a1", "lookalike")]
        assert pts(fb) == {**F1, "q_sample": 0}
        assert "differs from 'q_sample' only by look-alike characters" in msgs(fb, "q_sample") and "U+0430" in msgs(fb, "q_sample")

    def test_input_modified_in_place(self, trust):
        fb = trust["fb"][("a1", "mutates")]
        assert pts(fb) == {**F1, "q_sample": 0} and "modified its input argument(s) 1 in place" in msgs(fb, "q_sample")

    def test_output_too_large(self, trust):
        fb = trust["fb"][("a1", "too_large")]
        assert pts(fb) == {**F1, "q_sample": 0} and "more than the grader reads back" in msgs(fb, "q_sample")
        assert "os._exit" not in msgs(fb, "q_sample")

    def test_python_float_named(self, trust):
        fb = trust["fb"][("a1", "python_float")]
        assert pts(fb) == {**F1, "q_sample": 0} and "is a Python float, expected a tensor" in msgs(fb, "q_sample")
        fb = trust["fb"][("a2", "loss_float")]
        assert pts(fb) == {**F2, "ddpm_loss": 0} and "the loss cannot train the network: it returned a float" in msgs(fb, "ddpm_loss")

    def test_precision_told_apart_from_wrong_values(self, trust):
        fb = trust["fb"][("a1", "float16")]
        assert pts(fb)["q_sample"] == 0 and "a precision problem" in msgs(fb, "q_sample")
        assert "allowed" in msgs(fb, "q_sample")

    def test_a_loss_must_train(self, trust):
        fb = trust["fb"][("a2", "loss_detached")]
        assert pts(fb) == {**F2, "ddpm_loss": 0} and "the loss cannot train the network" in msgs(fb, "ddpm_loss")


@needs_bwrap
class TestOnlyOwnWork:
    @pytest.mark.parametrize("name, q", [("lib_lambda", "q_sample"), ("lib_def", "q_sample"), ("lib_importlib", "cosine_betas"),
                                         ("lib_getattr", "cosine_betas"), ("lib_partial", "cosine_betas"),
                                         ("lib_dunder_import", "cosine_betas"), ("lib_module_renamed", "cosine_betas"),
                                         ("lib_code_copied", "cosine_betas"), ("lib_source_exec", "cosine_betas"),
                                         ("lib_posterior_attrs", "q_posterior_mean_variance")])
    def test_the_library_answer_is_unreachable(self, trust, name, q):
        fb = trust["fb"][("a1", name)]
        assert fb["questions"][q]["points"] == 0, msgs(fb, q)

    def test_library_message_says_why(self, trust):
        assert LIB in msgs(trust["fb"][("a1", "lib_def")], "q_sample")
        assert pts(trust["fb"][("a2", "lib_subclass")])["TimeLinear"] == 0
        assert LIB in msgs(trust["fb"][("a4", "lib_cfgmodel")], "cfg_eps")
        for name, q in [("lib_guided_model", "classifier_guided_eps"), ("lib_ddim_coefficients", "ddim_step")]:  # A5's library
            assert pts(trust["fb"][("a5", name)]) == {**F5, q: 0} and LIB in msgs(trust["fb"][("a5", name)], q)

    def test_forged_and_junk_streams_earn_nothing_and_break_nothing(self, trust):
        fb = trust["fb"][("a1", "forge_stream")]
        assert fb["points"] == 0
        fb = trust["fb"][("a1", "junk_frames")]
        assert fb["points"] == 0 and "something wrote into the harness's pipe" in fb["status"], fb["status"]

    def test_memorised_self_check_answers_earn_nothing(self, trust):
        assert pts(trust["fb"][("a1", "memorised")])["cosine_betas"] == 0

    def test_copies_are_flagged_for_the_instructor_only(self, trust):
        fb = trust["fb"][("a1", "copied")]
        assert pts(fb) == F1
        flag = "q_posterior_mean_variance: its syntax tree, with names normalised, is the reference solution's, and it carries the solution's comment"
        assert flag in trust["rows"]["a1"]["copied"]["flags"]
        assert "q_sample:" not in trust["rows"]["a1"]["float32"]["flags"]  # its own q_sample (the rest is the solution's)
        for (key, name), feedback in trust["fb"].items():  # nothing of it reaches what a student sees
            assert "flags" not in feedback and "instructor" not in feedback and "syntax tree" not in json.dumps(feedback), (key, name)
        for path in (trust["tmp"] / "a1-feedback" / "gradescope").rglob("results.json"):
            assert "syntax tree" not in path.read_text() and "FLAGGED" not in path.read_text()


@needs_bwrap
class TestNothingTakesTheRunDown:
    @pytest.mark.parametrize("name, words", [("linked", "symbolic link"), ("zero", "symbolic link"), ("dangling", "symbolic link"),
                                             ("fifo", "FIFO"), ("folder", "a directory"), ("sparse", "over the 20 MB limit"),
                                             ("nested", "nested too deeply")])
    def test_every_path_gets_a_row(self, trust, name, words):
        fb = trust["fb"][("a1", name)]
        assert fb["points"] == 0 and words in fb["status"], fb["status"]
        assert trust["rows"]["a1"][name]["points"] == 0

    def test_ram_disks_are_bounded(self, trust):
        for name, tag in [("tmp_bomb", "TMP 28"), ("work_bomb", "WORK 28")]:  # ENOSPC: the RAM disk is full
            fb = trust["fb"][("a1", name)]
            assert pts(fb) == F1 and tag in fb["output"], fb["output"][-300:]
        assert f"TMPSIZE {LIMITS.tmp_mb}" in trust["fb"][("a1", "tmp_bomb")]["output"]
        assert int(trust["fb"][("a1", "work_bomb")]["output"].split("WORK 28 ")[1].split()[0]) <= LIMITS.work_mb

    def test_each_run_is_alone(self, trust):
        """A run (forked from the zygote or fresh) sees no other process, empty RAM disks (but matplotlib's cache of its own setup cell) and no capability."""
        out = trust["fb"][("a1", "neighbours")]["output"]
        assert "PROCS ['self'] PID 1" in out and "TMPFILES [] WORKFILES ['.mpl']" in out and "SIGNALLABLE []" in out, out
        assert "CAPS ['0000000000000000', '0000000000000000', '0000000000000000']" in out, out

    def test_gradescope_and_canvas_exports(self, trust):
        gs = json.loads((trust["tmp"] / "a1-feedback" / "gradescope" / "float32" / "results.json").read_text())
        assert gs["score"] == 9 and [t["name"] for t in gs["tests"]] == list(F1)
        assert all(t["max_score"] == 3 and t["visibility"] == "visible" for t in gs["tests"])
        with open(trust["tmp"] / "a1-canvas.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0][-1] == "Forward process and noise schedules (a1)" and rows[1][-1] == "9"
        assert ["float32", "", "float32", "float32", "", "9"] in rows


@needs_bwrap
def test_one_time_budget_per_submission(tmp_path):
    slow = "import time\n{sig}\n    time.sleep(0.8)\n    raise ValueError('slow')\n"
    sub = notebook(tmp_path, "a1", "sleeper", replace={
        "q_sample": slow.format(sig="def q_sample(x0, t, noise, betas):"),
        "cosine_betas": slow.format(sig="def cosine_betas(T, s=0.008):"),
        "q_posterior_mean_variance": slow.format(sig="def q_posterior_mean_variance(x0, x_t, t, betas):")})
    fb = grade_submission(ASSIGNMENTS["a1"], sub, Limits(timeout=7, question_timeout=5), MODE, seed=1)
    # a fresh sandbox starts in about 2 s; each question takes 3 x 0.8 s, under its own 5 s; the third runs into the 7 s
    assert fb["seconds"] < 12 and fb["time_budget"] == {"submission_s": 7, "question_s": 5}
    assert pts(fb) == {"q_sample": 0, "cosine_betas": 0, "q_posterior_mean_variance": 0}
    assert "raised ValueError: slow" in msgs(fb, "q_sample") and "time budget of 7 s" in msgs(fb, "q_posterior_mean_variance")


@needs_bwrap
def test_same_seed_same_score_at_any_jobs(trust, tmp_path):
    paths = trust["paths"]["a1"][:4] + [p for p in trust["paths"]["a1"] if p.stem == "random"]
    one = grade_batch("a1", paths, tmp_path / "j1.csv", jobs=1, limits=LIMITS, isolation=MODE, seed=11, progress=False)
    assert {s: r["points"] for s, r in one.items()} == {p.stem: trust["rows"]["a1"][p.stem]["points"] for p in paths}


@needs_bwrap
def test_resume_never_retries_a_file_that_stopped_the_grader(trust, tmp_path):
    good = trust["paths"]["a1"][1]
    out = tmp_path / "g.csv"
    fbdir = tmp_path / "g-feedback"
    fbdir.mkdir()
    import hashlib

    (fbdir / f".{good.stem}.started").write_text(hashlib.sha256(good.read_bytes()).hexdigest())  # as a killed grader leaves it
    rows = grade_batch("a1", [good], out, resume=True, limits=LIMITS, isolation=MODE, progress=False)
    assert rows[good.stem]["points"] == 0 and "was not retried" in rows[good.stem]["status"]


# ---- in-process properties --------------------------------------------------------------------
def test_hidden_cases_never_repeat_a_self_check_case():
    for a in ASSIGNMENTS.values():
        for q in a.questions:
            visible = {case_key(c) for c in q.cases(np.random.default_rng(SELF_CHECK_SEED))}
            for seed in range(30):
                assert not visible & {case_key(c) for c in hidden_cases(q, np.random.default_rng(seed))}, q.name


def test_stand_in_network_follows_the_library_conventions():
    """The toy network and the library's conditional networks agree on every call convention."""
    from ddpmkit.models import MLPConfig
    from ddpmkit.networks import build_model
    from ddpmkit.unet import UNet, UNetConfig

    rng = np.random.default_rng(0)
    K, D, T, B = 3, 4, 20, 5
    toy = materialize(Toy(rng.standard_normal((D, D)).astype("f4"), rng.standard_normal((T, D)).astype("f4"),
                          rng.standard_normal((K + 1, D)).astype("f4")))
    torch.manual_seed(0)
    nets = [toy, build_model(MLPConfig(dim=D, hidden=(8,), num_classes=K)).eval(),
            UNet(UNetConfig(in_channels=1, base_channels=8, channel_mults=(1,), attn_levels=(), num_classes=K)).eval()]
    for net in nets:
        x = torch.randn(B, 1, 2, 2) if isinstance(net, UNet) else torch.randn(B, D)
        t, null = torch.full((B,), 7), torch.full((B,), net.null_label)
        assert net.null_label == K
        with torch.no_grad():
            ref = net(x, t, null)
            for out in (net(x, t, None), net(x, t)):  # None and no label both mean the null label
                torch.testing.assert_close(out, ref)
            torch.testing.assert_close(net(x, torch.tensor([7]), null), ref)  # a (1,) step broadcasts
            with pytest.raises((ValueError, IndexError, RuntimeError)):
                net(x, t, torch.full((B,), K + 1))


def test_every_withheld_function_exists_and_raises_in_the_sandbox_copy(tmp_path):
    import subprocess
    import sys

    for a in ASSIGNMENTS.values():
        root = sanitized_root(a.library)
        code = "import ddpmkit, importlib, inspect\nprint(ddpmkit.__file__)\n"
        for path in a.library:
            mod, _, rest = path.partition(".")[2].partition(".")
            code += (f"m = importlib.import_module('ddpmkit.{mod}')\nobj = m\nfor part in {rest.split('.')!r}:\n    obj = getattr(obj, part)\n"
                     f"try:\n    obj(*[None] * sum(p.default is p.empty and p.kind <= 1 for p in inspect.signature(obj).parameters.values()))\n    print('CALLABLE {path}')\n"
                     f"except NotImplementedError as e:\n    assert '{LIB}' in str(e), e\n")
        if "ddpmkit.models.timestep_embedding" not in a.library:  # a helper A2's notebook uses keeps working
            code += "from ddpmkit.models import TimeEmbedding\nimport torch\nprint(TimeEmbedding(4)(torch.arange(3)).shape)\n"
        proc = subprocess.run([sys.executable, "-s", "-P", "-c", code], check=False, env={**os.environ, "PYTHONPATH": str(root)},
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert str(root) in proc.stdout and "CALLABLE" not in proc.stdout
        assert ("torch.Size([3, 4])" in proc.stdout) == ("ddpmkit.models.timestep_embedding" not in a.library)


def test_lookalike_skeleton():
    assert skeleton("q_s\u0430mple") == "q_sample" and skeleton("ch\u0430mfer") == "chamfer" and skeleton("cfg_eps") == "cfg_eps"


def test_feedback_names_the_worst_entry_relative_to_its_tolerance():
    from ddpmkit.grading.spec import Expected, Question, judge

    q = Question("f", lambda rng: [], lambda: None)
    exp = Expected([np.array([1000.0, 0.001])], [np.dtype("float32")], [np.array([1.0, 1e-6])])
    ok, msg = judge(q, exp, [np.array([1000.5, 0.002], dtype="float32")])
    assert not ok and "at index (1,)" in msg and "1 of 2 entries" in msg  # 0.5 is within 1, 0.001 is 1000x its tolerance


@needs_bwrap
def test_a_sandbox_that_cannot_start_is_never_the_students_fault(tmp_path):
    """Far too little memory for Python and PyTorch: the forked run fails, then a fresh one;
    the row says the grader failed, not the notebook."""
    sub = notebook(tmp_path, "a1", "fine")
    rows = grade_batch("a1", [sub], tmp_path / "g.csv", limits=Limits(memory_gb=0.2), isolation=MODE, seed=1, progress=False)
    fb = json.loads((tmp_path / "g-feedback" / "fine.json").read_text())
    assert rows["fine"]["points"] == 0 and fb["status"].startswith("grader error: the sandbox could not start"), fb["status"]
    assert "not your notebook's doing" in msgs(fb, "q_sample")
    assert any("a forked run could not start" in n for n in fb["notes"]), fb["notes"]


def test_the_sandbox_environment_is_complete():
    from ddpmkit.grading.sandbox import sandbox_env

    env = sandbox_env("/sandbox", 3)
    assert env["DDPMKIT_PROFILE"] == "smoke" and env["TQDM_DISABLE"] == "1" and env["PYTHONHASHSEED"] == "0" and env["HOME"] == "/sandbox"
