"""Answers to every graded question, written the many ways students write them.

``CORRECT[name]`` holds at least three correct answers per question (float32 throughout,
float64 cast back, algebraically equal forms, NumPy inside, loops instead of
vectorization); ``WRONG[name]`` the plausible mistakes the cases must catch. Each entry
is Python source defining the asked name, run after the assignment's released setup cell.
"""

CORRECT = {
    # ---- A1 ----
    "q_sample": [
        """def q_sample(x0, t, noise, betas):  # float32 throughout
    abar = torch.cumprod(1 - betas.float(), 0)[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise""",
        """def q_sample(x0, t, noise, betas):  # float64 cast back
    abar = torch.cumprod(1.0 - betas, dim=0)[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return (abar.sqrt() * x0.double() + (1.0 - abar).sqrt() * noise.double()).to(x0.dtype)""",
        """def q_sample(x0, t, noise, betas):  # NumPy inside
    abar = np.cumprod(1.0 - betas.numpy())[t.numpy()]
    a = torch.from_numpy(np.sqrt(abar)).float().view(-1, *([1] * (x0.dim() - 1)))
    b = torch.from_numpy(np.sqrt(1 - abar)).float().view(-1, *([1] * (x0.dim() - 1)))
    return a * x0 + b * noise""",
        """def q_sample(x0, t, noise, betas):  # a loop over the batch, log-space product
    out = torch.empty_like(x0)
    for i in range(x0.shape[0]):
        abar = math.exp(sum(math.log(1 - float(b)) for b in betas[: int(t[i]) + 1]))
        out[i] = math.sqrt(abar) * x0[i] + math.sqrt(1 - abar) * noise[i]
    return out""",
    ],
    "cosine_betas": [
        """def cosine_betas(T, s=0.008):  # float32 arithmetic, returned as float64
    steps = torch.arange(T + 1, dtype=torch.float32)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=0.999).double()""",
        """def cosine_betas(T, s=0.008):  # NumPy
    t = np.arange(T + 1) / T
    abar = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    abar = abar / abar[0]
    return torch.from_numpy(np.minimum(1 - abar[1:] / abar[:-1], 0.999))""",
        """def cosine_betas(T, s=0.008):  # a loop with math
    f = lambda i: math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([min(1 - f(i) / f(i - 1), 0.999) for i in range(1, T + 1)], dtype=torch.float64)""",
    ],
    "q_posterior_mean_variance": [
        """def q_posterior_mean_variance(x0, x_t, t, betas):  # float32 throughout
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0)
    prev = torch.cat([torch.ones(1), abar[:-1]])
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    c1 = (prev.sqrt() * b / (1 - abar))[t].view(shape)
    c2 = (a.sqrt() * (1 - prev) / (1 - abar))[t].view(shape)
    return c1 * x0 + c2 * x_t, ((1 - prev) / (1 - abar) * b)[t]""",
        """def q_posterior_mean_variance(x0, x_t, t, betas):  # abar_{t-1} = abar_t / alpha_t, float64 cast back
    a = 1 - betas; abar = torch.cumprod(a, 0)
    prev = abar[t] / a[t]
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    var = (1 - prev) / (1 - abar[t]) * betas[t]
    mean = (prev.sqrt() * betas[t] / (1 - abar[t])).view(shape) * x0 + (a[t].sqrt() * (1 - prev) / (1 - abar[t])).view(shape) * x_t
    return mean.to(x_t.dtype), var.to(x_t.dtype)""",
        """def q_posterior_mean_variance(x0, x_t, t, betas):  # NumPy coefficients, a loop over the batch
    b = betas.numpy(); abar = np.cumprod(1 - b)
    means, vars_ = [], []
    for i, s in enumerate(t.tolist()):
        prev = abar[s - 1] if s > 0 else 1.0
        c1 = np.sqrt(prev) * b[s] / (1 - abar[s]); c2 = np.sqrt(1 - b[s]) * (1 - prev) / (1 - abar[s])
        means.append(float(c1) * x0[i] + float(c2) * x_t[i]); vars_.append((1 - prev) / (1 - abar[s]) * b[s])
    return torch.stack(means), torch.tensor(vars_, dtype=x_t.dtype)""",
    ],
    # ---- A2 ----
    "TimeLinear": [
        """class TimeLinear(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.time_embedding = TimeEmbedding(dim_out)

    def forward(self, x, t):
        return torch.mul(self.fc(x), self.time_embedding(t))""",
        """class TimeLinear(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.time_embedding = TimeEmbedding(dim_out)

    def forward(self, x, t):  # the linear layer by hand, in float64, cast back
        y = x.double() @ self.fc.weight.double().T + self.fc.bias.double()
        return (y * self.time_embedding(t).double()).float()""",
        """class TimeLinear(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.time_embedding = TimeEmbedding(dim_out)

    def forward(self, x, t):
        gate = self.time_embedding(t)
        return torch.stack([self.fc(x[i]) * gate[i] for i in range(x.shape[0])])""",
    ],
    "ddpm_loss": [
        """def ddpm_loss(model, x0, t, noise, betas):  # float32 throughout, F.mse_loss
    abar = torch.cumprod(1 - betas.float(), 0)[t][:, None]
    return F.mse_loss(model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t), noise)""",
        """def ddpm_loss(model, x0, t, noise, betas):  # float64 schedule, x_t cast back
    abar = torch.cumprod(1 - betas, 0)[t][:, None]
    x_t = (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).float()
    return ((model(x_t, t) - noise) ** 2).sum() / noise.numel()""",
        """def ddpm_loss(model, x0, t, noise, betas):  # per-example losses, then their mean
    abar = torch.cumprod(1 - betas, 0)[t].float()
    x_t = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * noise
    return (noise - model(x_t, t)).pow(2).mean(dim=1).mean()""",
    ],
    "p_sample": [
        """def p_sample(model, x_t, t, z, betas):  # float32 throughout
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0)
    eps = model(x_t, torch.full((x_t.shape[0],), t))
    mean = (x_t - b[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt()
    return mean + b[t].sqrt() * z if t > 0 else mean""",
        """def p_sample(model, x_t, t, z, betas):  # through x0 and the posterior mean, float64 cast back
    a = 1 - betas; abar = torch.cumprod(a, 0); prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    eps = model(x_t, torch.full((x_t.shape[0],), t)).double()
    x0 = (x_t.double() - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
    mean = prev.sqrt() * betas[t] / (1 - abar[t]) * x0 + a[t].sqrt() * (1 - prev) / (1 - abar[t]) * x_t.double()
    if t > 0:
        mean = mean + betas[t].sqrt() * z.double()
    return mean.float()""",
        """def p_sample(model, x_t, t, z, betas):  # NumPy coefficients
    b = betas.numpy(); abar = np.cumprod(1 - b)
    eps = model(x_t, torch.tensor([t] * x_t.shape[0]))
    mean = (x_t - float(b[t] / np.sqrt(1 - abar[t])) * eps) * float(1 / np.sqrt(1 - b[t]))
    return mean + float(np.sqrt(b[t])) * z * (t > 0)""",
    ],
    "p_sample_loop": [
        """def p_sample_loop(model, x_T, zs, betas):
    x = x_T
    for t in range(len(betas) - 1, -1, -1):
        x = p_sample(model, x, t, zs[t], betas)
    return x""",
        """def p_sample_loop(model, x_T, zs, betas):  # p_sample inlined, float32 throughout
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0)
    x = x_T.clone()
    for t in reversed(range(len(b))):
        eps = model(x, torch.full((x.shape[0],), t))
        x = (x - b[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt()
        if t:
            x = x + b[t].sqrt() * zs[t]
    return x""",
        """def p_sample_loop(model, x_T, zs, betas):  # inlined, float64 state, cast back
    a = 1 - betas; abar = torch.cumprod(a, 0); x = x_T.double()
    for t in reversed(range(len(betas))):
        eps = model(x.float(), torch.full((x.shape[0],), t)).double()
        x = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt() + (betas[t].sqrt() * zs[t] if t else 0)
    return x.float()""",
    ],
    "chamfer": [
        """def chamfer(x, y):  # float32 cdist, a tensor back
    d = torch.cdist(x, y) ** 2
    return d.min(1).values.sum() + d.min(0).values.sum()""",
        """def chamfer(x, y):  # NumPy broadcasting
    d = ((x.numpy()[:, None, :] - y.numpy()[None, :, :]) ** 2).sum(-1)
    return float(d.min(1).sum() + d.min(0).sum())""",
        """def chamfer(x, y):  # loops
    total = 0.0
    for a, b in ((x, y), (y, x)):
        for p in a:
            total += ((b - p) ** 2).sum(1).min().item()
    return total""",
    ],
    # ---- A3 ----
    "sinusoidal_embedding": [
        """def sinusoidal_embedding(t, dim):  # float64 cast back
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    args = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / half)[None]
    emb = torch.cat([args.cos(), args.sin(), torch.zeros(len(t), dim % 2, dtype=torch.float64)], 1)
    return emb.float()""",
        """def sinusoidal_embedding(t, dim):  # 10000 ** (-k / h)
    h = dim // 2
    w = 10000 ** (-torch.arange(h).float() / h)
    a = t[:, None].float() * w
    out = torch.zeros(len(t), dim)
    out[:, :h], out[:, h:2 * h] = torch.cos(a), torch.sin(a)
    return out""",
        """def sinusoidal_embedding(t, dim):  # a loop with math
    h = dim // 2
    rows = []
    for s in t.tolist():
        w = [10000.0 ** (-k / h) for k in range(h)]
        rows.append([math.cos(s * x) for x in w] + [math.sin(s * x) for x in w] + [0.0] * (dim % 2))
    return torch.tensor(rows, dtype=torch.float32)""",
    ],
    "ConditionEmbedding": [
        """class ConditionEmbedding(nn.Module):
    def __init__(self, base, num_classes):
        super().__init__()
        self.base, self.null = base, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(base, 4 * base), nn.SiLU(), nn.Linear(4 * base, 4 * base))
        self.class_emb = nn.Embedding(num_classes + 1, 4 * base)

    def forward(self, t, y=None):
        y = torch.full_like(t, self.null) if y is None else y
        return self.class_emb.weight[y] + self.time_mlp(sinusoidal_embedding(t, self.base))""",
        """class ConditionEmbedding(nn.Module):
    def __init__(self, base, num_classes):
        super().__init__()
        self.base, self.null = base, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(base, 4 * base), nn.SiLU(), nn.Linear(4 * base, 4 * base))
        self.class_emb = nn.Embedding(num_classes + 1, 4 * base)

    def forward(self, t, y=None):  # the MLP by hand
        l1, l2 = self.time_mlp[0], self.time_mlp[2]
        h = F.silu(sinusoidal_embedding(t, self.base) @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
        if y is None:
            return h + self.class_emb(torch.tensor(self.null)).expand_as(h)
        return h + self.class_emb(y)""",
        """class ConditionEmbedding(nn.Module):
    def __init__(self, base, num_classes):
        super().__init__()
        self.base, self.null = base, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(base, 4 * base), nn.SiLU(), nn.Linear(4 * base, 4 * base))
        self.class_emb = nn.Embedding(num_classes + 1, 4 * base)

    def forward(self, t, y=None):  # float64 arithmetic, cast back
        mlp = [m.double() if isinstance(m, nn.Linear) else m for m in self.time_mlp]
        h = sinusoidal_embedding(t, self.base).double()
        for m in mlp:
            h = m(h)
        for m in self.time_mlp:
            m.float()
        y = torch.full((len(t),), self.null) if y is None else y
        return (h + self.class_emb.weight.double()[y]).float()""",
    ],
    "ResBlock": [
        """class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb)).view(x.shape[0], -1, 1, 1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))""",
        """class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # functional, float64 cast back
        d = lambda m: (m.weight.double(), m.bias.double())
        x64 = x.double()
        h = F.conv2d(F.silu(F.group_norm(x64, self.norm1.num_groups, *d(self.norm1))), *d(self.conv1), padding=1)
        h = h + F.linear(F.silu(emb.double()), *d(self.emb))[:, :, None, None]
        h = F.conv2d(F.silu(F.group_norm(h, self.norm2.num_groups, *d(self.norm2))), *d(self.conv2), padding=1)
        s = F.conv2d(x64, *d(self.skip)) if isinstance(self.skip, nn.Conv2d) else x64
        return (h + s).float()""",
        """class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # the bias added after the activation's input is formed, per example
        outs = []
        for i in range(x.shape[0]):
            h = self.conv1(F.silu(self.norm1(x[i : i + 1])))
            h = h + self.emb(F.silu(emb[i]))[None, :, None, None]
            outs.append(self.conv2(F.silu(self.norm2(h))) + self.skip(x[i : i + 1]))
        return torch.cat(outs)""",
    ],
    "reverse_step": [
        """def reverse_step(out, x_t, t, z, betas, predictor):  # float32 throughout
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0)
    prev = abar[t - 1] if t > 0 else torch.tensor(1.0)
    if predictor == "eps":
        mean = (x_t - b[t] / (1 - abar[t]).sqrt() * out) / a[t].sqrt()
    elif predictor == "x0":
        mean = prev.sqrt() * b[t] / (1 - abar[t]) * out + a[t].sqrt() * (1 - prev) / (1 - abar[t]) * x_t
    else:
        mean = out
    return mean + b[t].sqrt() * z if t > 0 else mean""",
        """def reverse_step(out, x_t, t, z, betas, predictor):  # eps -> x0 -> posterior mean, float64 cast back
    a = 1 - betas; abar = torch.cumprod(a, 0); prev = abar[t] / a[t]
    x_t64, out64 = x_t.double(), out.double()
    if predictor == "mean":
        mean = out64
    else:
        x0 = out64 if predictor == "x0" else (x_t64 - (1 - abar[t]).sqrt() * out64) / abar[t].sqrt()
        mean = prev.sqrt() * betas[t] / (1 - abar[t]) * x0 + a[t].sqrt() * (1 - prev) / (1 - abar[t]) * x_t64
    if t > 0:
        mean = mean + betas[t].sqrt() * z.double()
    return mean.to(x_t.dtype)""",
        """import numpy as np


def reverse_step(out, x_t, t, z, betas, predictor):  # NumPy coefficients
    b = betas.numpy(); abar = np.cumprod(1 - b); prev = abar[t - 1] if t else 1.0
    coef = {"eps": (float(1 / np.sqrt(1 - b[t])), float(-b[t] / np.sqrt(1 - abar[t]) / np.sqrt(1 - b[t]))),
            "x0": (float(np.sqrt(1 - b[t]) * (1 - prev) / (1 - abar[t])), float(np.sqrt(prev) * b[t] / (1 - abar[t]))),
            "mean": (0.0, 1.0)}[predictor]
    mean = coef[0] * x_t + coef[1] * out
    return mean + float(np.sqrt(b[t])) * z if t else mean""",
    ],
    # ---- A4 ----
    "cfg_eps": [
        """def cfg_eps(model, x, t, y, w):  # None is the null label, as in the book
    eps_c, eps_u = model(x, t, y), model(x, t, None)
    return eps_c + w * (eps_c - eps_u)""",
        """def cfg_eps(model, x, t, y, w):  # no label at all for the unconditional branch
    return (1 + w) * model(x, t, y) - w * model(x, t)""",
        """def cfg_eps(model, x, t, y, w):  # one batched call
    out = model(torch.cat([x, x]), t, torch.cat([y, torch.full_like(y, model.null_label)]))
    c, u = out.chunk(2)
    return (1 + w) * c - w * u""",
    ],
    "guided_sample": [
        """def guided_sample(model, x_T, y, w, zs, betas):  # float32 throughout
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0); x = x_T
    for t in range(len(b) - 1, -1, -1):
        eps = cfg_eps(model, x, torch.tensor([t]), y, w)
        x = (x - b[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt() + (b[t].sqrt() * zs[t] if t > 0 else 0)
    return x""",
        """def guided_sample(model, x_T, y, w, zs, betas):  # guidance inlined with None, float64 state
    a = 1 - betas; abar = torch.cumprod(a, 0); x = x_T.double()
    for t in reversed(range(len(betas))):
        tt = torch.tensor([t])
        c, u = model(x.float(), tt, y).double(), model(x.float(), tt, None).double()
        eps = (1 + w) * c - w * u
        x = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt()
        if t:
            x = x + betas[t].sqrt() * zs[t].double()
    return x.float()""",
        """def guided_sample(model, x_T, y, w, zs, betas):  # the step of A2 as a helper
    def step(x, t):
        abar = torch.cumprod(1 - betas, 0)
        eps = cfg_eps(model, x, torch.tensor([t]), y, w).double()
        mean = (x.double() - betas[t] / (1 - abar[t]).sqrt() * eps) / (1 - betas[t]).sqrt()
        return (mean + (betas[t].sqrt() * zs[t] if t else 0)).float()
    x = x_T
    for t in reversed(range(len(betas))):
        x = step(x, t)
    return x""",
    ],
    "classify": [
        """@torch.no_grad()
def classify(model, x0, ts, noises, betas):  # float64 arithmetic, float32 network
    abar = torch.cumprod(1 - betas, 0); K = model.null_label
    err = torch.zeros(x0.shape[0], K, dtype=torch.float64)
    for t, eps in zip(ts.tolist(), noises):
        x_t = (abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps).float()
        for k in range(K):
            err[:, k] += ((model(x_t, torch.tensor([t]), torch.full((x0.shape[0],), k)) - eps).double() ** 2).flatten(1).mean(1)
    err = (err / len(ts)).float()
    return err.argmin(1), err""",
        """def classify(model, x0, ts, noises, betas):  # labels batched, float32 throughout
    abar = torch.cumprod(1 - betas.float(), 0); K, B = model.null_label, x0.shape[0]
    errs = []
    with torch.no_grad():
        for t, eps in zip(ts.tolist(), noises):
            x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
            out = model(x_t.repeat(K, *([1] * (x0.dim() - 1))), torch.tensor([t]), torch.arange(K).repeat_interleave(B))
            errs.append(((out - eps.repeat(K, *([1] * (x0.dim() - 1)))) ** 2).flatten(1).mean(1).view(K, B).T)
    e = torch.stack(errs).mean(0)
    return torch.argmin(e, dim=1), e""",
        """import numpy as np


def classify(model, x0, ts, noises, betas):  # a loop per example
    abar = np.cumprod(1 - betas.numpy()); K, B = model.null_label, x0.shape[0]
    e = torch.zeros(B, K)
    with torch.no_grad():
        for j in range(len(ts)):
            t = int(ts[j])
            x_t = float(np.sqrt(abar[t])) * x0 + float(np.sqrt(1 - abar[t])) * noises[j]
            for k in range(K):
                d = model(x_t, torch.tensor([t]), torch.full((B,), k)) - noises[j]
                e[:, k] += d.reshape(B, -1).pow(2).mean(1) / len(ts)
    return e.argmin(1), e""",
    ],
    # ---- A5 ----
    "ddim_step": [
        """def ddim_step(model, x_t, t, t_prev, eta, z, betas):  # float32 throughout
    abar = torch.cumprod(1 - betas.float(), 0)
    a, ap = abar[t], (abar[t_prev] if t_prev >= 0 else torch.tensor(1.0))
    eps = model(x_t, torch.full((x_t.shape[0],), t))
    x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    sig = eta * ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()
    return ap.sqrt() * x0 + (1 - ap - sig ** 2).clamp(min=0).sqrt() * eps + sig * z""",
        """def ddim_step(model, x_t, t, t_prev, eta, z, betas):  # float64 state, Python floats, cast back
    abar = np.cumprod(1 - betas.numpy())
    a, ap = float(abar[t]), (float(abar[t_prev]) if t_prev >= 0 else 1.0)
    eps = model(x_t, torch.tensor([t])).double()
    x0 = (x_t.double() - math.sqrt(1 - a) * eps) / math.sqrt(a)
    sig = eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
    out = math.sqrt(ap) * x0 + math.sqrt(max(0.0, 1 - ap - sig * sig)) * eps + sig * z.double()
    return out.float()""",
        """def ddim_step(model, x_t, t, t_prev, eta, z, betas):  # the direction form: x_t rescaled, plus eps
    abar = torch.cumprod(1 - betas, 0)
    a = abar[t]; ap = abar[t_prev] if t_prev >= 0 else abar.new_ones(())
    eps = model(x_t, t)
    sig = eta * torch.sqrt((1 - ap) / (1 - a)) * torch.sqrt(1 - a / ap)
    c_eps = torch.sqrt(torch.clamp(1 - ap - sig ** 2, min=0)) - torch.sqrt(ap) * torch.sqrt(1 - a) / torch.sqrt(a)
    return ((ap / a).sqrt() * x_t.double() + c_eps * eps.double() + sig * z.double()).to(x_t.dtype)""",
    ],
    "kl_term": [
        """def kl_term(x0, x_t, t, eps_hat, betas, variance):  # float32 throughout
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0); prev = torch.cat([torch.ones(1), abar[:-1]])
    sh = (-1,) + (1,) * (x0.dim() - 1)
    bt = b * (1 - prev) / (1 - abar)
    mq = (prev.sqrt() * b / (1 - abar))[t].view(sh) * x0 + (a.sqrt() * (1 - prev) / (1 - abar))[t].view(sh) * x_t
    mp = (x_t - (b / (1 - abar).sqrt())[t].view(sh) * eps_hat) / a.sqrt()[t].view(sh)
    vq, vp = bt[t].view(sh), (b if variance == "beta" else bt)[t].view(sh)
    return (0.5 * (vp.log() - vq.log() + vq / vp + (mq - mp) ** 2 / vp - 1)).flatten(1).sum(1)""",
        """def kl_term(x0, x_t, t, eps_hat, betas, variance):  # torch.distributions, in float64
    a = 1 - betas; abar = torch.cumprod(a, 0); prev = torch.cat([abar.new_ones(1), abar[:-1]])
    sh = (-1,) + (1,) * (x0.dim() - 1)
    bt = betas * (1 - prev) / (1 - abar)
    mq = (prev.sqrt() * betas / (1 - abar))[t].view(sh) * x0.double() + (a.sqrt() * (1 - prev) / (1 - abar))[t].view(sh) * x_t.double()
    mp = (x_t.double() - (betas / (1 - abar).sqrt())[t].view(sh) * eps_hat.double()) / a.sqrt()[t].view(sh)
    vp = (betas if variance == "beta" else bt)[t].view(sh)
    q = torch.distributions.Normal(mq, bt[t].view(sh).sqrt().expand_as(mq))
    p = torch.distributions.Normal(mp, vp.sqrt().expand_as(mp))
    return torch.distributions.kl_divergence(q, p).flatten(1).sum(1).float()""",
        """def kl_term(x0, x_t, t, eps_hat, betas, variance):  # the mean gap in epsilon form, a loop per example
    out = torch.zeros(x0.shape[0])
    abar = torch.cumprod(1 - betas, 0)
    for i in range(x0.shape[0]):
        k = int(t[i]); b, ab, ap = float(betas[k]), float(abar[k]), float(abar[k - 1])
        bt = b * (1 - ap) / (1 - ab); vp = b if variance == "beta" else bt
        eps = (x_t[i].double() - math.sqrt(ab) * x0[i].double()) / math.sqrt(1 - ab)  # the noise that made x_t
        gap = b / math.sqrt(1 - ab) / math.sqrt(1 - b) * (eps - eps_hat[i].double())  # mu~ - mu_theta
        d = x0[i].numel()
        out[i] = 0.5 * (d * (math.log(vp / bt) + bt / vp - 1) + float((gap ** 2).sum()) / vp)
    return out""",
    ],
    "classifier_guided_eps": [
        """def classifier_guided_eps(model, classifier, x, t, y, scale, betas):  # backward() and .grad
    eps = model(x, t).detach()
    x_in = x.clone().requires_grad_(True)
    with torch.enable_grad():
        lp = F.log_softmax(classifier(x_in, t), dim=1).gather(1, y[:, None]).sum()
        lp.backward()
    s = (1 - torch.cumprod(1 - betas.float(), 0)[t]).sqrt().view(-1, *([1] * (x.dim() - 1)))
    return eps - scale * s * x_in.grad""",
        """def classifier_guided_eps(model, classifier, x, t, y, scale, betas):  # the softmax gradient by hand, per example
    abar = torch.cumprod(1 - betas, 0)
    out = model(x, t).detach().clone()
    for i in range(x.shape[0]):
        xi = x[i:i + 1].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = classifier(xi, t)[0]
            lp = logits[y[i]] - torch.logsumexp(logits, 0)
            (g,) = torch.autograd.grad(lp, xi)
        out[i] = out[i] - scale * math.sqrt(1 - float(abar[int(t)])) * g[0]
    return out""",
        """def classifier_guided_eps(model, classifier, x, t, y, scale, betas):  # torch.func, float64 coefficient
    from torch.func import grad, vmap
    def log_p(xi, yi):
        return torch.log_softmax(classifier(xi[None], t), -1)[0].gather(0, yi[None])[0]
    g = vmap(grad(log_p))(x, y)
    c = (1 - torch.cumprod(1 - betas, 0)[t]).sqrt()
    return (model(x, t).double() - scale * c.reshape(-1, *([1] * (x.dim() - 1))) * g.double()).float()""",
    ],
}

WRONG = {
    "q_sample": """def q_sample(x0, t, noise, betas):  # abar instead of its square root
    abar = torch.cumprod(1 - betas, 0)[t].reshape(-1, *([1] * (x0.dim() - 1))).float()
    return abar * x0 + (1 - abar) * noise""",
    "cosine_betas": """def cosine_betas(T, s=0.008):  # no clipping
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    return 1 - f[1:] / f[:-1]""",
    "q_posterior_mean_variance": """def q_posterior_mean_variance(x0, x_t, t, betas):  # beta_t as the variance
    a = 1 - betas; abar = torch.cumprod(a, 0); prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    mean = (prev.sqrt() * betas / (1 - abar))[t].view(shape) * x0 + (a.sqrt() * (1 - prev) / (1 - abar))[t].view(shape) * x_t
    return mean.float(), betas[t].float()""",
    "TimeLinear": """class TimeLinear(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.time_embedding = TimeEmbedding(dim_out)

    def forward(self, x, t):  # added instead of multiplied
        return self.fc(x) + self.time_embedding(t)""",
    "ddpm_loss": """def ddpm_loss(model, x0, t, noise, betas):  # regresses x0 instead of the noise
    abar = torch.cumprod(1 - betas, 0)[t].float()[:, None]
    return F.mse_loss(model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t), x0)""",
    "p_sample": """def p_sample(model, x_t, t, z, betas):  # noise added at the last step too
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0)
    eps = model(x_t, torch.full((x_t.shape[0],), t))
    return (x_t - b[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt() + b[t].sqrt() * z""",
    "p_sample_loop": """def p_sample_loop(model, x_T, zs, betas):  # the steps in the wrong order
    x = x_T
    for t in range(len(betas)):
        x = p_sample(model, x, t, zs[t], betas)
    return x""",
    "chamfer": """def chamfer(x, y):  # a mean, not a sum
    d = torch.cdist(x, y) ** 2
    return float(d.min(1).values.mean() + d.min(0).values.mean())""",
    "sinusoidal_embedding": """def sinusoidal_embedding(t, dim):  # half precision
    h = dim // 2
    a = (t[:, None].half() * torch.exp(-math.log(10000.0) * torch.arange(h).half() / h)).float()
    return torch.cat([a.cos(), a.sin(), torch.zeros(len(t), dim % 2)], 1)""",
    "ConditionEmbedding": """class ConditionEmbedding(nn.Module):
    def __init__(self, base, num_classes):
        super().__init__()
        self.base, self.null = base, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(base, 4 * base), nn.SiLU(), nn.Linear(4 * base, 4 * base))
        self.class_emb = nn.Embedding(num_classes + 1, 4 * base)

    def forward(self, t, y=None):  # label 0 instead of the null label
        y = torch.zeros_like(t) if y is None else y
        return self.time_mlp(sinusoidal_embedding(t, self.base)) + self.class_emb(y)""",
    "ResBlock": """class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # no SiLU before the embedding's projection
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.conv2(F.silu(self.norm2(h))) + self.skip(x)""",
    "reverse_step": """def reverse_step(out, x_t, t, z, betas, predictor):  # x0 treated like eps
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0)
    mean = out if predictor == "mean" else (x_t - b[t] / (1 - abar[t]).sqrt() * out) / a[t].sqrt()
    return mean + b[t].sqrt() * z if t > 0 else mean""",
    "cfg_eps": """def cfg_eps(model, x, t, y, w):  # the sign of w flipped
    return (1 - w) * model(x, t, y) + w * model(x, t, None)""",
    "guided_sample": """def guided_sample(model, x_T, y, w, zs, betas):  # guidance forgotten
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0); x = x_T
    for t in range(len(b) - 1, -1, -1):
        eps = model(x, torch.tensor([t]), y)
        x = (x - b[t] / (1 - abar[t]).sqrt() * eps) / a[t].sqrt() + (b[t].sqrt() * zs[t] if t > 0 else 0)
    return x""",
    "classify": """@torch.no_grad()
def classify(model, x0, ts, noises, betas):  # the null label counted as a class
    abar = torch.cumprod(1 - betas.float(), 0); K = model.null_label + 1
    err = torch.zeros(x0.shape[0], K)
    for t, eps in zip(ts.tolist(), noises):
        x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
        for k in range(K):
            err[:, k] += ((model(x_t, torch.tensor([t]), torch.full((x0.shape[0],), k)) - eps) ** 2).flatten(1).mean(1)
    err /= len(ts)
    return err.argmin(1), err""",
    "ddim_step": """def ddim_step(model, x_t, t, t_prev, eta, z, betas):  # sigma without the sqrt((1 - abar_prev) / (1 - abar_t)) factor
    abar = torch.cumprod(1 - betas.float(), 0)
    a, ap = abar[t], (abar[t_prev] if t_prev >= 0 else torch.tensor(1.0))
    eps = model(x_t, torch.full((x_t.shape[0],), t))
    x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    sig = eta * (1 - a / ap).sqrt()
    return ap.sqrt() * x0 + (1 - ap - sig ** 2).clamp(min=0).sqrt() * eps + sig * z""",
    "kl_term": """def kl_term(x0, x_t, t, eps_hat, betas, variance):  # the mean term alone, whatever the variance
    b = betas.float(); a = 1 - b; abar = torch.cumprod(a, 0); prev = torch.cat([torch.ones(1), abar[:-1]])
    sh = (-1,) + (1,) * (x0.dim() - 1)
    bt = b * (1 - prev) / (1 - abar)
    mq = (prev.sqrt() * b / (1 - abar))[t].view(sh) * x0 + (a.sqrt() * (1 - prev) / (1 - abar))[t].view(sh) * x_t
    mp = (x_t - (b / (1 - abar).sqrt())[t].view(sh) * eps_hat) / a.sqrt()[t].view(sh)
    vp = (b if variance == "beta" else bt)[t].view(sh)
    return (0.5 * (mq - mp) ** 2 / vp).flatten(1).sum(1)""",
    "classifier_guided_eps": """def classifier_guided_eps(model, classifier, x, t, y, scale, betas):  # the gradient added, not subtracted
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(F.log_softmax(classifier(x_in, t), 1).gather(1, y[:, None]).sum(), x_in)[0]
    s = (1 - torch.cumprod(1 - betas.float(), 0)[t]).sqrt().view(-1, *([1] * (x.dim() - 1)))
    return model(x, t) + scale * s * g""",
}
