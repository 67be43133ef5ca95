"""The grader along its trust boundary (issue 21): nothing a submission does stops, slows or
bloats a class run; runs cannot see or touch each other; a notebook runs as in Jupyter.

Each submission below is graded for real, in the sandbox, with its exact points and message.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from grading_notebooks import MODE, msgs, needs_bwrap, notebook, pts

from ddpmkit.grading.assignments import ASSIGNMENTS
from ddpmkit.grading.grader import grade_batch, question_end
from ddpmkit.grading.sandbox import Limits

F1 = {"q_sample": 3, "cosine_betas": 3, "q_posterior_mean_variance": 3}
F2 = {"TimeLinear": 3, "ddpm_loss": 3, "p_sample": 3, "p_sample_loop": 3, "chamfer": 3}
F3 = {"sinusoidal_embedding": 3, "ConditionEmbedding": 3, "ResBlock": 3, "reverse_step": 6}
F4 = {"cfg_eps": 3, "guided_sample": 3, "classify": 3}
F5 = {"ddim_step": 4, "kl_term": 3, "classifier_guided_eps": 3}
TIGHT = Limits(timeout=24, question_timeout=40)  # an instructor's --timeout below --question-timeout

# ---- 1. no submission can stop, slow or bloat a class run -------------------------------------------
GRAB = """
def _grab(helper):  # what a hostile answer finds in the reference helper's closure: the nonce and the pipe
    cells = {type(c.cell_contents).__name__ + ':' + str(i): c.cell_contents for i, c in enumerate(helper.__closure__)}
    nonce = [v for v in cells.values() if isinstance(v, str) and len(v) == 32][0]
    send = [v for v in cells.values() if callable(v) and getattr(v, '__name__', '') == 'send'][0]
    return nonce, send
"""
STALL = {
    "a1": {
        "loops": {"q_sample": "def q_sample(x0, t, noise, betas):\n    while True:\n        pass\n"},
        "sleeps_last": {"q_posterior_mean_variance": "import time\ndef q_posterior_mean_variance(x0, x_t, t, betas):\n    time.sleep(10**6)\n"},
        "flood_pipe": {"cosine_betas": """import os
def cosine_betas(T, s=0.008):
    while True:
        for fd in range(3, 64):
            try:
                os.write(fd, b'\\xff' * 65536)
            except OSError:
                pass
"""},
    },
    "a2": {
        "never_reads": {"p_sample_loop": GRAB + """import time
from ddpmkit.grading.inside.wire import encode
def p_sample_loop(model, x_T, zs, betas):
    nonce, send = _grab(p_sample)
    for _ in range(400):  # 400 reference answers asked for, none read
        arrays = []
        send({'t': 'helper', 'nonce': nonce, 'name': 'p_sample', 'args': encode([model, x_T, 1, zs[0], betas], arrays),
              'kwargs': encode({}, arrays)}, arrays)
    time.sleep(10**6)
"""},
        "huge_helper_array": {"p_sample_loop": """def p_sample_loop(model, x_T, zs, betas):
    x = x_T.repeat(20000, 1)
    for t in range(len(betas) - 1, -1, -1):
        x = p_sample(model, x, t, zs[t].repeat(20000, 1), betas)
    return x[: len(x_T)]
"""},
    },
    "a3": {
        "huge_helper_int": {"ConditionEmbedding": """class ConditionEmbedding(nn.Module):
    def __init__(self, base, num_classes):
        super().__init__()
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, 4 * base), nn.SiLU(), nn.Linear(4 * base, 4 * base))
        self.class_emb = nn.Embedding(num_classes + 1, 4 * base)

    def forward(self, t, y=None):
        sinusoidal_embedding(t, 10**9)
"""},
    },
}


@pytest.fixture(scope="module")
def stalled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stall")
    fbs = {}
    for key, subs in STALL.items():
        paths = [notebook(tmp, key, name, replace=rep) for name, rep in subs.items()]
        grade_batch(key, paths, tmp / f"{key}.csv", jobs=2, limits=TIGHT, isolation=MODE, seed=21, progress=False)
        for p in paths:
            fbs[p.stem] = json.loads((tmp / f"{key}-feedback" / f"{p.stem}.json").read_text())
    return fbs


@needs_bwrap
class TestNothingStopsTheClass:
    def test_an_endless_loop_costs_its_own_question(self, stalled):
        fb = stalled["loops"]
        assert pts(fb) == {**F1, "q_sample": 0}, msgs(fb, "q_sample")
        # the time it was given, its share of --timeout 24 (not --question-timeout 40), is what the message says
        given = float(re.search(r"timed out after (\d+) s", msgs(fb, "q_sample")).group(1))
        assert 6 <= given <= 16, msgs(fb, "q_sample")

    def test_a_stall_in_the_last_question(self, stalled):
        assert pts(stalled["sleeps_last"]) == {**F1, "q_posterior_mean_variance": 0}

    def test_a_flooded_pipe_costs_its_own_question(self, stalled):
        fb = stalled["flood_pipe"]
        assert pts(fb) == {**F1, "cosine_betas": 0}, fb["status"]
        assert "wrote into the harness's pipe" in msgs(fb, "cosine_betas")

    def test_a_run_that_never_reads_its_helper_answers(self, stalled):
        fb = stalled["never_reads"]
        assert pts(fb) == {**F2, "p_sample_loop": 0}, msgs(fb, "p_sample_loop")
        assert "timed out" in msgs(fb, "p_sample_loop")
        assert fb["seconds"] < TIGHT.timeout + 15

    def test_helpers_are_computed_only_at_the_case_sizes(self, stalled):
        fb = stalled["huge_helper_int"]
        assert pts(fb) == {**F3, "ConditionEmbedding": 0}
        assert "sinusoidal_embedding (the grader's reference) was not called: one argument is the value 1,000,000,000" in msgs(fb, "ConditionEmbedding")
        fb = stalled["huge_helper_array"]
        assert pts(fb) == {**F2, "p_sample_loop": 0}
        assert "p_sample (the grader's reference) was not called: one argument is an array of 640,000 entries" in msgs(fb, "p_sample_loop")

    @pytest.mark.parametrize("timeout, question_timeout, n", [(24, 40, 3), (120, 40, 5), (30, 5, 4), (10, 10, 9)])
    def test_every_question_keeps_a_share(self, timeout, question_timeout, n):
        """Each question, however the earlier ones used their time, ends early enough for the
        questions after it to have their guaranteed share, and never later than --question-timeout."""
        limits = Limits(timeout=timeout, question_timeout=question_timeout)
        share = min(question_timeout, timeout / (n + 1))
        import time

        for used in (0.0, share / 2, timeout / 2, timeout - share):
            budget_end = time.monotonic() - used + timeout
            for after in range(n):
                end = question_end(limits, n, after, budget_end)
                now = time.monotonic()
                assert end - now <= question_timeout + 1e-3
                assert budget_end - end >= min(share * after, budget_end - now - min(share, budget_end - now)) - 1e-3
                assert end - now >= min(share, budget_end - now) - 1e-3


HOSTILE_RSS = """
import json, resource, sys
from pathlib import Path
from ddpmkit.grading.grader import grade_batch
from ddpmkit.grading.sandbox import Limits
honest, hostile, out = (json.loads(a) for a in sys.argv[1:4])
grade_batch("a2", honest, Path(out) / "honest.csv", jobs=2, limits=Limits(timeout=24, question_timeout=40), seed=3, progress=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
grade_batch("a2", hostile, Path(out) / "hostile.csv", jobs=2, limits=Limits(timeout=24, question_timeout=40), seed=3, progress=False)
print(json.dumps({"honest": base >> 10, "hostile": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}))
"""
RSS_GROWTH_MB = 150  # the stated bound: what a hostile batch may add to the grader's peak over an honest one (one 65 MB frame at a time)
RSS_BOUND_MB = 3000  # and a ceiling whatever the machine (an honest batch peaks at 1.2-1.7 GB: PyTorch and the references)


@needs_bwrap
def test_the_graders_memory_is_bounded_over_a_hostile_batch(tmp_path):
    honest = [notebook(tmp_path, "a2", f"honest{i}") for i in range(2)]
    hostile = [notebook(tmp_path, "a2", name, replace=rep) for name, rep in STALL["a2"].items()]
    hostile.append(notebook(tmp_path, "a2", "flood", replace={"p_sample_loop": """import os
def p_sample_loop(model, x_T, zs, betas):
    big = b'[' * (1 << 20)
    for fd in range(3, 64):
        try:
            os.write(fd, (len(big)).to_bytes(4, 'big') + big)
        except OSError:
            pass
"""}))
    run = subprocess.run([sys.executable, "-c", HOSTILE_RSS, json.dumps([str(p) for p in honest]), json.dumps([str(p) for p in hostile]),
                          json.dumps(str(tmp_path))], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    rss = json.loads(run.stdout.strip().splitlines()[-1])
    print("grader peak RSS (MB):", rss)
    assert rss["hostile"] <= RSS_BOUND_MB and rss["hostile"] - rss["honest"] <= RSS_GROWTH_MB, rss


# ---- 2. runs cannot see or touch each other -----------------------------------------------------------
PASS_A_BYTE = """
import os, time, secrets
mine = secrets.token_hex(8)
print('TOKEN', mine)
wrote = []
def writable_dirs():
    for top in ('/tmp', '/sandbox', '/dev', '/dev/shm', '/run', '/var/tmp', '/home', os.path.expanduser('~'), os.getcwd()):
        for root, dirs, files in os.walk(top):
            if os.access(root, os.W_OK):
                yield root
for d in sorted(set(writable_dirs())):
    try:
        with open(os.path.join(d, 'note-' + mine), 'w') as f:
            f.write(mine)
        wrote.append(d)
    except OSError:
        pass
print('WROTE', sorted(wrote))
time.sleep(4)  # the other run does the same meanwhile
found = []
for d in sorted(set(writable_dirs())) + ['/']:
    for root, dirs, files in os.walk(d):
        dirs[:] = [x for x in dirs if root != '/' or x not in ('proc', 'sys', 'usr', 'lib', 'lib64', 'bin', 'sbin', 'etc', 'work', 'root', 'opt')]
        found += [f for f in files if f.startswith('note-') and f != 'note-' + mine]
print('FOUND', sorted(set(found)))
print('FDS', sorted(int(fd) for fd in os.listdir('/proc/self/fd')))
"""
STORAGE = """
import ctypes, errno, os, mmap
libc = ctypes.CDLL(None, use_errno=True)
def fill(path, mb):
    n = 0
    try:
        with open(path, 'wb') as f:
            for _ in range(mb):
                f.write(b'x' * 2**20)
                n += 1
    except OSError:
        pass
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return n
print('STORE', {d: fill(d + '/fill', 600) for d in ('/tmp', '/sandbox', '/dev/shm', '/dev')})
def err(ret):
    return 'ok' if ret >= 0 else errno.errorcode[ctypes.get_errno()]
print('MEMFD', err(libc.syscall(319, b'x', 0)))
print('SHMGET', err(libc.syscall(29, 0, 1 << 30, 0o1000 | 0o600)))
print('UNSHARE', err(libc.unshare(0x10000000 | 0x20000)))
print('MOUNT', err(libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None)))
print('SETNS', err(libc.setns(0, 0)))
print('CLONE_NEWNET', err(libc.syscall(56, 0x00010000 | 0x00000100 | 0x00000800 | 0x40000000, 0, 0, 0, 0)))
try:
    os.fork()
    print('FORK ok')
except OSError as exc:
    print('FORK', errno.errorcode[exc.errno])
"""


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("neighbours")
    paths = [notebook(tmp, "a1", name, add=[PASS_A_BYTE]) for name in ("ann", "ben")]
    paths.append(notebook(tmp, "a1", "store", add=[STORAGE]))
    grade_batch("a1", paths, tmp / "a1.csv", jobs=2, limits=Limits(timeout=60, question_timeout=20), isolation=MODE, seed=4, progress=False)
    return {p.stem: json.loads((tmp / "a1-feedback" / f"{p.stem}.json").read_text()) for p in paths}


def _printed(fb, tag):
    line = next(ln for ln in fb["output"].splitlines() if ln.startswith(tag + " "))
    return line[len(tag) + 1 :]


@needs_bwrap
class TestRunsAreApart:
    def test_two_runs_at_once_cannot_pass_a_byte(self, neighbours):
        for name in ("ann", "ben"):
            fb = neighbours[name]
            assert pts(fb) == F1
            assert {"/tmp", "/sandbox", "/dev/shm"} <= set(eval(_printed(fb, "WROTE"))), fb["output"]
            assert _printed(fb, "FOUND") == "[]", fb["output"]

    def test_a_run_holds_only_its_own_descriptors(self, neighbours):
        fds = eval(_printed(neighbours["ann"], "FDS"))
        assert len(fds) <= 6 and fds[:3] == [0, 1, 2], fds  # stdin/out/err, the two pipes, the listing itself

    def test_storage_stays_within_its_limits_by_every_route(self, neighbours):
        fb = neighbours["store"]
        lim = Limits()
        store = eval(_printed(fb, "STORE"))
        assert store["/tmp"] <= lim.tmp_mb and store["/sandbox"] <= lim.work_mb and store["/dev/shm"] <= lim.shm_mb, store
        assert store["/dev"] <= 1, store
        for tag in ("MEMFD", "SHMGET", "UNSHARE", "MOUNT", "SETNS", "CLONE_NEWNET", "FORK"):
            assert _printed(fb, tag) == "EPERM", (tag, fb["output"])


# ---- 3. a notebook that runs in Jupyter runs the same in the grader ----------------------------------------
JUPYTER = {
    "a1": {
        "continuations": {"q_sample": """def q_sample(x0, t, noise, betas):
    abar = torch.cumprod(1 - betas, 0)[t].reshape(-1, *([1] * (x0.dim() - 1)))
    batched = (x0.dim()
               != 0)
    k = (7
         % 5)
    return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype) if batched and k == 2 else None
"""},
        "magics": {"cosine_betas": """def cosine_betas(T, s=0.008):
    import my_schedules  # written by %%writefile in a later cell, which runs before any call
    return my_schedules.cosine(T, s)
"""},
    },
    "a2": {
        "numpy_steps": {"p_sample_loop": """def p_sample_loop(model, x_T, zs, betas):
    x = x_T
    for t in np.arange(len(betas))[::-1]:  # NumPy ints reach the reference p_sample
        x = p_sample(model, x, t, zs[t], betas)
    return x
"""},
    },
    "a4": {
        "int_t": {"guided_sample": """def guided_sample(model, x_T, y, w, zs, betas):
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    x = x_T
    for t in reversed(range(len(betas))):
        eps = cfg_eps(model, x, t, y, w)  # t as a Python int, as the networks take it
        x = (x - (betas[t] / (1.0 - abar[t]).sqrt()).to(x.dtype) * eps) / alphas[t].sqrt().to(x.dtype)
        if t > 0:
            x = x + betas[t].sqrt().to(x.dtype) * zs[t]
    return x
"""},
    },
    "a5": {
        "torch_func": {"classifier_guided_eps": """def classifier_guided_eps(model, classifier, x, t, y, scale, betas):
    from torch.func import grad, vmap

    def log_p(xi, yi):
        return F.log_softmax(classifier(xi[None], t), dim=-1)[0].gather(0, yi.reshape(1))[0]

    g = vmap(grad(log_p))(x, y)  # (B, ...)
    coef = (1 - torch.cumprod(1.0 - betas, dim=0)[t]).sqrt().to(x.dtype)
    return model(x, t) - scale * coef.reshape(-1, *[1] * (x.dim() - 1)) * g
"""},
        "needs_grad_mode": {"classifier_guided_eps": """def classifier_guided_eps(model, classifier, x, t, y, scale, betas):
    x_in = x.detach().requires_grad_(True)  # no torch.enable_grad(): fails when the caller runs without gradients
    log_p = F.log_softmax(classifier(x_in, t), dim=-1)
    g = torch.autograd.grad(log_p[torch.arange(len(y)), y].sum(), x_in)[0]
    coef = (1 - torch.cumprod(1.0 - betas, dim=0)[t]).sqrt().to(x.dtype)
    return model(x, t) - scale * coef.reshape(-1, *[1] * (x.dim() - 1)) * g
"""},
    },
}
MAGIC_CELLS = [
    "%matplotlib inline\nimport matplotlib.pyplot as plt",
    "listing = !ls\nprint('LISTING', repr(listing))",
    "!pip install nothing-at-all\n%pip install nothing-either",
    "display(torch.ones(2))\nq_sample?",
    "%%bash\necho this does not run\n",
    ("%%writefile my_schedules.py\nimport math\nimport torch\n\n\ndef cosine(T, s):\n"
     "    f = [math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2 for i in range(T + 1)]\n"
     "    return torch.tensor([min(1 - f[i] / f[i - 1], 0.999) for i in range(1, T + 1)], dtype=torch.float64)\n"),
    "import my_schedules\nprint('IMPORTED', my_schedules.cosine(10, 0.008).shape)",
    "%time x = 1\n%timeit -n 1 -r 1 x + 1",
]


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jupyter")
    fbs = {}
    for key, subs in JUPYTER.items():
        paths = [notebook(tmp, key, name, replace=rep, add=MAGIC_CELLS if name == "magics" else ()) for name, rep in subs.items()]
        grade_batch(key, paths, tmp / f"{key}.csv", jobs=2, limits=Limits(timeout=90, question_timeout=30), isolation=MODE, seed=8,
                    progress=False)
        for p in paths:
            fbs[p.stem] = json.loads((tmp / f"{key}-feedback" / f"{p.stem}.json").read_text())
    return fbs


@needs_bwrap
class TestJupyterCodeRunsAsInJupyter:
    @pytest.mark.parametrize("name, full", [("continuations", F1), ("magics", F1), ("numpy_steps", F2), ("int_t", F4), ("torch_func", F5)])
    def test_full_marks(self, jupyter, name, full):
        fb = jupyter[name]
        assert pts(fb) == full, (fb["cells"], {q: msgs(fb, q) for q in full})
        assert fb["cells"] == []

    def test_shell_escapes_say_they_did_not_run(self, jupyter):
        out = jupyter["magics"]["output"]
        assert "shell commands are not run during grading: ls" in out
        assert "LISTING []" in out and "IMPORTED torch.Size([10])" in out
        assert "shell commands are not run during grading: %%bash" in out and "this does not run\n" not in out.replace("echo this", "")

    def test_the_notebooks_rule_holds_without_gradients(self, jupyter):
        fb = jupyter["needs_grad_mode"]
        assert pts(fb) == {**F5, "classifier_guided_eps": 0}
        assert "torch.enable_grad()" in msgs(fb, "classifier_guided_eps")


@pytest.mark.parametrize("helper", ["p_sample", "sinusoidal_embedding", "cfg_eps"])
def test_references_in_place_of_helpers_take_every_form_of_t(helper):
    """A reference put in place of a student's function accepts each way the notebook's
    conventions allow a step index to be passed, with the same result."""
    import numpy as np
    import torch

    from ddpmkit.grading.spec import call, materialize

    key = {"p_sample": "a2", "sinusoidal_embedding": "a3", "cfg_eps": "a4"}[helper]
    q = ASSIGNMENTS[key].question(helper)
    for case in q.cases(np.random.default_rng(5)):
        args = [materialize(a) for a in case.args]
        pos = {"p_sample": 2, "sinusoidal_embedding": 0, "cfg_eps": 2}[helper]
        t = args[pos]
        base = call(q, q.reference, case)
        if helper == "sinusoidal_embedding":
            forms = [t.numpy(), list(t.tolist())] + ([int(t[0]), np.int64(t[0]), t[0]] if len(t) == 1 else [])
            dims = [args[1], np.int64(args[1]), torch.tensor(args[1])]
            outs = [q.reference(f, d) for f in forms for d in dims]
        else:
            v = int(torch.as_tensor(t).reshape(-1)[0])
            uniform = torch.as_tensor(t).numel() == 1 or bool((torch.as_tensor(t) == v).all())
            forms = [v, np.int64(v), torch.tensor(v), torch.tensor([v])] if uniform else [np.asarray(t)]
            outs = [q.reference(*args[:pos], f, *args[pos + 1 :]) for f in forms]
        for out in outs:
            assert torch.equal(out, base), helper


# ---- 4. the same bug costs the same points ---------------------------------------------------------------
@needs_bwrap
def test_the_same_bug_costs_the_same_points_however_graded(tmp_path):
    """Without --seed every student draws their own hidden values, but of the same kinds: ten
    copies of one buggy file get the same points, and a varied class gets the same points
    per question at -j 1, at -j 2 and as two shards merged."""
    from grading_variants import CORRECT, WRONG

    from ddpmkit.grading.grader import merge_gradebooks, read_gradebook

    limits = Limits(timeout=60, question_timeout=20)
    (tmp_path / "copies").mkdir()
    buggy = [notebook(tmp_path / "copies", "a1", f"copy{i}", replace={"cosine_betas": WRONG["cosine_betas"]}) for i in range(10)]
    rows = grade_batch("a1", buggy, tmp_path / "copies.csv", jobs=2, limits=limits, isolation=MODE, progress=False)
    assert len({tuple(r[q] for q in F1) for r in rows.values()}) == 1, rows
    assert len({r["points"] for r in rows.values()}) == 1 and int(next(iter(rows.values()))["points"]) < 9
    (tmp_path / "class").mkdir()
    subs = {"v0": {"q_sample": CORRECT["q_sample"][2]}, "v1": {"q_posterior_mean_variance": WRONG["q_posterior_mean_variance"]},
            "v2": {"q_sample": WRONG["q_sample"], "cosine_betas": CORRECT["cosine_betas"][1]},
            "v3": {"cosine_betas": WRONG["cosine_betas"], "q_posterior_mean_variance": CORRECT["q_posterior_mean_variance"][0]}}
    paths = [notebook(tmp_path / "class", "a1", name, replace=rep) for name, rep in subs.items()]
    books = {}
    for label, kw in [("j1", {"jobs": 1}), ("j2", {"jobs": 2})]:
        books[label] = grade_batch("a1", paths, tmp_path / f"{label}.csv", limits=limits, isolation=MODE, progress=False, **kw)
    for k in (1, 2):
        grade_batch("a1", paths, tmp_path / f"s{k}.csv", jobs=2, shard=(k, 2), limits=limits, isolation=MODE, progress=False)
    merge_gradebooks([tmp_path / "s1.csv", tmp_path / "s2.csv"], tmp_path / "merged.csv")
    books["shards"] = read_gradebook(tmp_path / "merged.csv")
    per_question = {label: {s: tuple(str(r[q]) for q in F1) for s, r in b.items()} for label, b in books.items()}
    assert per_question["j1"] == per_question["j2"] == per_question["shards"], per_question


# ---- the wire: one codec, one parser ----------------------------------------------------------------------
def _random_value(rng, depth=0):
    import numpy as np
    import torch

    from ddpmkit.grading.inside.toys import ToyModel

    kinds = ["int", "float", "bool", "none", "str", "npint", "npfloat", "tensor", "array", "dtype"] + (["tuple", "list", "dict", "toy"] if depth < 3 else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    shape = tuple(int(d) for d in rng.integers(0, 4, int(rng.integers(0, 3))))
    dtype = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_][int(rng.integers(6))]
    return {"int": lambda: int(rng.integers(-10**12, 10**12)), "float": lambda: float(rng.standard_normal()), "bool": lambda: bool(rng.integers(2)),
            "none": lambda: None, "str": lambda: "s" * int(rng.integers(5)), "npint": lambda: np.int64(rng.integers(100)),
            "npfloat": lambda: np.float32(rng.standard_normal()), "tensor": lambda: torch.from_numpy(np.asarray(rng.standard_normal(shape) * 5).astype(dtype)),
            "array": lambda: np.asarray(rng.standard_normal(shape) * 5).astype(dtype), "dtype": lambda: torch.float32,
            "tuple": lambda: tuple(_random_value(rng, depth + 1) for _ in range(int(rng.integers(4)))),
            "list": lambda: [_random_value(rng, depth + 1) for _ in range(int(rng.integers(4)))],
            "dict": lambda: {f"k{i}": _random_value(rng, depth + 1) for i in range(int(rng.integers(3)))},
            "toy": lambda: ToyModel(torch.ones(2, 2), torch.zeros(3, 2), torch.ones(4, 2) if rng.integers(2) else None)}[kind]()


def _same(a, b) -> bool:
    import numpy as np
    import torch

    from ddpmkit.grading.inside.toys import ToyModel

    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, ToyModel):
        return all(_same(getattr(a, k), getattr(b, k)) for k in ToyModel.WEIGHTS)
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and np.array_equal(a, b)
    return a == b


def test_every_value_round_trips_through_the_wire():
    import numpy as np

    from ddpmkit.grading.inside.wire import FrameReader, decode, encode, pack

    rng = np.random.default_rng(0)
    for _ in range(300):
        value = [_random_value(rng) for _ in range(int(rng.integers(1, 5)))]
        arrays = []
        frame = pack({"t": "x", "v": encode(value, arrays)}, arrays)
        reader = FrameReader(1 << 20)
        for i in range(0, len(frame), 7):  # in pieces, as a pipe delivers it
            reader.feed(frame[i : i + 7])
        head, arrs = reader.next()
        assert reader.next() is None and _same(decode(head["v"], arrs), value)


@pytest.mark.parametrize("bad", [{"tensor": 5}, {"tensor": -1}, {"numpy": "0"}, {"net": ["evil", {}]}, {"dtype": "object"}, {"value": [1]},
                                 {"list": [{"value": 1}] * 20000}, {"tuple": {"value": 1}}, {"a": 1, "b": 2}, [], {"device": "cuda"},
                                 {"dict": [["k"]]}, {"list": [{"list": [{"list": [{"list": [{"list": [{"list": [{"list": [{"list": [
                                     {"list": [{"list": []}]}]}]}]}]}]}]}]}]}])
def test_malformed_descriptions_are_refused(bad):
    import numpy as np

    from ddpmkit.grading.inside.wire import decode

    with pytest.raises(ValueError):
        decode(bad, [np.zeros(2)])


def _framed(header: bytes, rest: bytes = b"") -> bytes:
    return len(header).to_bytes(4, "big") + header + rest


@pytest.mark.parametrize("data, why", [(b"\xff\xff\xff\xff", "header of"), (_framed(b"[1,2]"), "not an object"),
                                       (_framed(b'{"arrays": [["<f4", [10000000000], 40000000000]]}'), "over the"),
                                       (_framed(b'{"arrays": [["|O", [1], 8]], "t": 1}', b"12345678"), "not numeric"),
                                       (_framed(b'{"arrays": [["<f4", [2], 4]], "t": 1}', b"abcd"), "add up"),
                                       (_framed(b'{"arrays": [["<f4", [-2], 4]], "t": 1}', b"abcd"), "malformed"),
                                       (_framed(b"{" * 5000 + b"}" * 5000), "unreadable")])
def test_garbled_frames_are_refused_before_they_are_buffered(data, why):
    from ddpmkit.grading.inside.wire import FrameError, FrameReader

    reader = FrameReader(1 << 20)
    reader.feed(data)
    with pytest.raises(FrameError, match=why):
        reader.next()


# ---- 5. copy flags on strong evidence only ---------------------------------------------------------------
def test_copy_flags_rarely_touch_independent_work_and_catch_the_pasted_solution():
    """False flags, measured: every independently written correct variant (``grading_variants``)
    and the short natural forms an independent writer converges to (a solution under
    ``LARGE_COPY_NODES`` nodes without its comments) are at most 1 in 20 flagged; the solution
    pasted as it is, is flagged wherever it carries a comment of its own or is large."""
    import io
    import tokenize

    from grading_variants import CORRECT

    from ddpmkit.grading.notebooks import LARGE_COPY_NODES, copy_flags, reference_forms

    def uncommented(src: str) -> str:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type != tokenize.COMMENT]
        return tokenize.untokenize(toks)

    honest, flagged, pasted = 0, [], 0
    for a in ASSIGNMENTS.values():
        from ddpmkit.grading.notebooks import assignments_dir, grading_meta, student_notebook

        refs = reference_forms(assignments_dir() / "source" / a.source)
        solved = {q: c.source for c in student_notebook(assignments_dir() / "source" / a.source, keep_solutions=True).cells
                  for q in grading_meta(c).get("questions", [])}
        for q in a.questions:
            ref = {q.name: refs[q.name]}
            samples = list(CORRECT[q.name]) + ([uncommented(solved[q.name])] if refs[q.name].size < LARGE_COPY_NODES else [])
            for src in samples:
                honest += 1
                if copy_flags({q.name: src}, ref):
                    flagged.append((q.name, src[:60]))
            if refs[q.name].marks or refs[q.name].size >= LARGE_COPY_NODES:
                pasted += 1
                assert copy_flags({q.name: solved[q.name]}, ref), f"{q.name}: the pasted solution is not flagged"
    print(f"false flags: {len(flagged)} of {honest} independent answers; pasted solutions flagged: {pasted}")
    assert honest >= 60 and len(flagged) <= honest / 20, flagged
    assert pasted >= 6  # the questions whose solution is large or carries a distinctive comment


# ---- 6. feedback a student can act on ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_precision_is_named_only_within_lower_precision_rounding(seed):
    """Values rounded to float16 or bfloat16 are called a precision problem; values off by
    more than that rounding can do are called wrong, with how far off they are."""
    import numpy as np
    import torch

    from ddpmkit.grading.spec import expected_outputs, judge

    q = ASSIGNMENTS["a1"].question("q_sample")
    case = q.cases(np.random.default_rng(seed))[0]
    exp = expected_outputs(q, case, seed)
    e = exp.values[0]
    for dtype in (torch.float16, torch.bfloat16):
        got = torch.from_numpy(e).to(dtype).float().numpy()
        ok, msg = judge(q, exp, [got])
        assert not ok and "16 rounding does to this computation" in msg and "a precision problem" in msg, msg
    ok, msg = judge(q, exp, [(e * 1.2).astype(np.float32)])  # 20% off: more than bfloat16 arithmetic does here
    assert not ok and "a wrong value, not rounding" in msg and "precision" not in msg, msg


@pytest.fixture(scope="module")
def situations(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("situations")
    (tmp / "a1").mkdir()
    paths = [notebook(tmp, "a1", "renamed", replace={"q_sample": "def qsample(x0, t, noise, betas):\n    return x0\n"})]
    script = tmp / "a1" / "script.ipynb"
    script.write_text("# %%\nimport torch\n\n\ndef q_sample(x0, t, noise, betas):\n    return x0\n")
    other = notebook(tmp, "a3", "other")
    paths += [script, other.rename(tmp / "a1" / "other.ipynb")]
    grade_batch("a1", paths, tmp / "a1.csv", jobs=2, limits=Limits(timeout=60, question_timeout=20), isolation=MODE, seed=2, progress=False)
    return {p.stem: json.loads((tmp / "a1-feedback" / f"{p.stem}.json").read_text()) for p in paths}


@needs_bwrap
class TestTheSituationIsNamed:
    def test_a_renamed_function(self, situations):
        fb = situations["renamed"]
        assert pts(fb) == {**F1, "q_sample": 0}
        assert "you defined 'qsample': was it renamed? The grader calls the function by the name 'q_sample'" in msgs(fb, "q_sample")

    def test_a_python_script_saved_as_a_notebook(self, situations):
        fb = situations["script"]
        assert fb["points"] == 0 and "this is a Python script saved with the .ipynb extension" in fb["status"], fb["status"]

    def test_another_assignments_notebook(self, situations):
        fb = situations["other"]
        assert fb["points"] == 0 and "this is the notebook of A3 (" in fb["status"] and "submit a1_forward.ipynb" in fb["status"], fb["status"]

    def test_failing_cases_show_their_inputs(self, situations):
        assert "[inputs: x0: (16, 2) float32 [" in msgs(situations["renamed"], "q_sample")


def test_the_self_check_warns_when_an_answer_calls_the_library(capsys):
    """The library's own answer scores 0 in the grader; the self-check says so instead of passing it."""
    from ddpmkit import selfcheck

    ns: dict = {}
    exec("from ddpmkit.schedules import make_betas\ndef cosine_betas(T, s=0.008):\n    return make_betas('cosine', T, cosine_s=s)\n", ns)
    selfcheck.check(ns["cosine_betas"])
    out = capsys.readouterr().out
    assert "it calls the library's ddpmkit.schedules.make_betas, the function you are asked to write" in out
    assert not selfcheck.passed("cosine_betas")


# ---- more of a class's odd notebooks, each with its exact points and message -------------------------------
ODD = {
    "exit_in_cell": ({}, ["raise SystemExit(3)"], F1, {}),
    "exit_in_call": ({"cosine_betas": "import sys\ndef cosine_betas(T, s=0.008):\n    sys.exit(1)\n"}, [], {**F1, "cosine_betas": 0},
                     {"cosine_betas": "raised SystemExit"}),
    "segfault": ({"q_sample": "import ctypes\ndef q_sample(x0, t, noise, betas):\n    ctypes.string_at(0)\n"}, [], {**F1, "q_sample": 0},
                 {"q_sample": "a segmentation fault"}),
    "recursion": ({"cosine_betas": "def cosine_betas(T, s=0.008):\n    return cosine_betas(T, s)\n"}, [], {**F1, "cosine_betas": 0},
                  {"cosine_betas": "RecursionError"}),
    "memory_hog": ({"q_posterior_mean_variance": "def q_posterior_mean_variance(x0, x_t, t, betas):\n    return torch.ones(10**10), 0\n"}, [],
                   {**F1, "q_posterior_mean_variance": 0}, {"q_posterior_mean_variance": "raised"}),
    "syntax_error": ({"q_sample": "def q_sample(x0, t, noise, betas):\n    return x0 +\n"}, [], {**F1, "q_sample": 0},
                     {"q_sample": "its cell failed before defining it: SyntaxError"}),
    "nan": ({"q_sample": "def q_sample(x0, t, noise, betas):\n    return x0 * float('nan')\n"}, [], {**F1, "q_sample": 0},
            {"q_sample": "has NaN values"}),
    "print_flood": ({}, ["import sys\nfor _ in range(50):\n    sys.stdout.write('x' * 2**20)\n"], F1, {}),
    "top_level_await": ({}, ["import asyncio\nawait asyncio.sleep(0)\nprint('AWAITED')"], F1, {}),
    "noisy_thread": ({}, [("import threading, time\ndef spam():\n    while True:\n        print('spam')\n        time.sleep(0.01)\n"
                           "threading.Thread(target=spam, daemon=True).start()")], F1, {}),
    "patches_numpy": ({"q_sample": "def q_sample(x0, t, noise, betas):\n    abar = torch.cumprod(1 - betas, 0)[t].reshape(-1, *([1] * (x0.dim() - 1))).float()\n"
                                   "    x0.mul_(abar.sqrt())\n    return x0 + (1 - abar).sqrt() * noise\n"},
                      ["import numpy as np\nnp.array_equal = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True"], {**F1, "q_sample": 0},
                      {"q_sample": "modified its input argument(s) 1 in place"}),
    "returns_list": ({"cosine_betas": "def cosine_betas(T, s=0.008):\n    return [0.1] * T\n"}, [], {**F1, "cosine_betas": 0},
                     {"cosine_betas": "returned"}),
}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("odd")
    paths = [notebook(tmp, "a1", name, replace=rep, add=add) for name, (rep, add, _, _) in ODD.items()]
    grade_batch("a1", paths, tmp / "a1.csv", jobs=2, limits=Limits(timeout=60, question_timeout=20), isolation=MODE, seed=6, progress=False)
    return {p.stem: json.loads((tmp / "a1-feedback" / f"{p.stem}.json").read_text()) for p in paths}


@needs_bwrap
@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_notebooks_get_exactly_their_points(odd, name):
    fb = odd[name]
    _, _, points, words = ODD[name]
    assert pts(fb) == points, (fb["status"], fb["cells"], {q: msgs(fb, q) for q in points})
    for q, word in words.items():
        assert word in msgs(fb, q), msgs(fb, q)


@needs_bwrap
def test_what_odd_notebooks_print_is_kept_and_counted(odd):
    assert any("the notebook printed 50.0 MB; only the first 64 KB are kept" in n for n in odd["print_flood"]["notes"])
    assert "AWAITED" in odd["top_level_await"]["output"]
    assert [c["cell"] for c in odd["exit_in_cell"]["cells"]] and "SystemExit" in odd["exit_in_cell"]["cells"][0]["error"]


def test_the_self_checks_library_watch_knows_each_function_by_its_own_code():
    """Decorated library functions (``@torch.no_grad()``) share a wrapper's code object with every
    other decorated function; the self-check watches each function's own code, so a student's
    decorated answer is not mistaken for the library's."""
    from ddpmkit.selfcheck import _library_codes

    for a in ASSIGNMENTS.values():
        codes = _library_codes(a.library)
        assert len(codes) == len(a.library) and all(c.co_name != "decorate_context" for c in codes), a.key
