"""Extra scheduler reference cases for `schedules/tests/fixtures/extra`, made the way
`reference/schedules` was made (its README §2–§4): the exact denoiser of the same Gaussian
mixture, the same initial noise z, diffusers 0.42.1 re-executed in float64.

Cases:
* diffusers multistep solvers at 1000 inference steps (the CLI's presets on DDPM linear betas).
  Their DPM `linspace` rule, round(linspace(0, 999, 1001))[::-1][:-1], holds timestep 500
  twice (499.5 and 500.499 both round to 500). diffusers 0.42.1 keeps the duplicate and
  divides by h = 0 in the next multistep update: every run ends in NaN. Older diffusers
  (PR #2969) removed duplicates with np.unique, keeping the first occurrence; these cases are
  diffusers 0.42.1 with that de-duplication applied after `set_timesteps` (timesteps and
  their sigmas; the final sigma kept). For DPMSolverMultistepScheduler that equals its own
  custom-`timesteps` path given the unique list (checked: identical timesteps and sigmas).
* DPM-Solver singlestep at 1000 steps: diffusers runs it finitely with the duplicate (its
  order-2 steps span two intervals), so it is recorded unmodified.
* k-diffusion `sample_dpmpp_2s_ancestral` (diffusers has no such scheduler; its
  `DPMSolverSinglestepScheduler` has no ancestral noise), the installed k-diffusion 0.1.1.post1
  function itself driving `external.DiscreteEpsDDPMDenoiser` (float64 ᾱ). Only the sigmas are
  computed here: k-diffusion's `DiscreteSchedule.t_to_sigma` casts t to float32, so the same
  formula is evaluated in float64 (and checked against k-diffusion's to float32 precision).

Stochastic cases draw their noise from a rule both sides compute bit for bit instead of storing
it: splitmix64 → 53-bit uniforms → Irwin–Hall sum of 12 minus 6 (mean 0, variance 1).

Needs torch, diffusers 0.42.1 and k-diffusion: `pip install --no-deps k-diffusion==0.1.1.post1
torchsde torchdiffeq trampoline` (k-diffusion's own package `__init__` pulls in training
dependencies; only its `sampling` and `external` modules are loaded).

Usage: python scripts/make_schedule_extra_references.py [OUT_DIR]
(default schedules/tests/fixtures/extra; reads schedules/tests/fixtures/schedules/common.safetensors).
"""

import functools
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
COMMON = ROOT / "schedules/tests/fixtures/schedules/common.safetensors"
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "schedules/tests/fixtures/extra"
torch.set_default_dtype(torch.float64)
MASK = (1 << 64) - 1


def float64_module(name):
    """A diffusers scheduler module re-executed with its float32 constants in float64."""
    mod = importlib.import_module(name)
    src = inspect.getsource(mod)
    src = src.replace("torch.float32", "torch.float64").replace("np.float32", "np.float64")
    patched = types.ModuleType(name)
    patched.__package__ = mod.__package__
    patched.__file__ = mod.__file__
    exec(compile(src, mod.__file__, "exec"), patched.__dict__)
    return patched


def splitmix_noise(seed, rows, width):
    """rows × width draws: Irwin–Hall(12) − 6 over splitmix64 53-bit uniforms."""
    state = seed & MASK
    out = np.empty(rows * width)
    for k in range(rows * width):
        acc = 0.0
        for _ in range(12):
            state = (state + 0x9E3779B97F4A7C15) & MASK
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            z ^= z >> 31
            acc += (z >> 11) * (1.0 / 9007199254740992.0)
        out[k] = acc - 6.0
    return out.reshape(rows, width)


class Mixture:
    def __init__(self, common):
        self.mu = common["mixture_mu"]
        self.std = common["mixture_std"]
        self.w = common["mixture_weight"]

    def eps(self, x, alpha, sigma):
        """E[ε | x_t = x] for x_t = α x₀ + σ ε (README §2.1)."""
        d = x.shape[-1]
        v = alpha**2 * self.std**2 + sigma**2
        dev = x[:, None, :] - alpha * self.mu[None]
        ll = np.log(self.w) - 0.5 * d * np.log(2 * np.pi * v) - (dev**2).sum(-1) / (2 * v)
        r = np.exp(ll - ll.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        return (r[:, :, None] * sigma * dev / v[None, :, None]).sum(1)

    def x0(self, x, alpha, sigma):
        v = alpha**2 * self.std**2 + sigma**2
        dev = x[:, None, :] - alpha * self.mu[None]
        d = x.shape[-1]
        ll = np.log(self.w) - 0.5 * d * np.log(2 * np.pi * v) - (dev**2).sum(-1) / (2 * v)
        r = np.exp(ll - ll.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        part = self.mu[None] + (alpha * self.std**2 / v)[None, :, None] * dev
        return (r[:, :, None] * part).sum(1)


def keep_rows(n, extra=()):
    """Stored trajectory rows: every 100th, the neighbourhood of the duplicate, the last."""
    rows = set(range(0, n + 1, 100)) | {n} | {k for k in extra if 0 <= k <= n}
    return sorted(rows)


def dedup(s):
    """np.unique(timesteps, return_index=True), first occurrences in order (diffusers PR #2969)."""
    ts = s.timesteps.numpy()
    _, first = np.unique(ts, return_index=True)
    keep = np.sort(first)
    s.timesteps = torch.from_numpy(ts[keep].copy())
    s.sigmas = torch.cat([s.sigmas[:-1][torch.from_numpy(keep)], s.sigmas[-1:]])
    s.num_inference_steps = len(keep)


def diffusers_case(name, cls, config, steps, mix, z, dedup_timesteps, note, noise_seed=None):
    sched = cls(**config)
    sched.set_timesteps(steps)
    if dedup_timesteps:
        dedup(sched)
    ts = sched.timesteps.numpy().astype(np.float64)
    n = len(ts)
    ac = sched.alphas_cumprod.numpy()
    noise = splitmix_noise(noise_seed, n, z.size).reshape(n, *z.shape) if noise_seed else None
    x = z * float(sched.init_noise_sigma)
    orders = record_orders(sched)
    traj, model_t, alphas, sigmas_m, outs = [x.copy()], [], [], [], []
    for i, t in enumerate(sched.timesteps):
        a, s = math.sqrt(ac[int(t)]), math.sqrt(1.0 - ac[int(t)])
        out = mix.eps(x, a, s)
        model_t.append(float(t))
        alphas.append(a)
        sigmas_m.append(s)
        outs.append(out)
        kwargs = {"variance_noise": torch.from_numpy(noise[i])} if noise is not None else {}
        x = sched.step(torch.from_numpy(out), t, torch.from_numpy(x), **kwargs).prev_sample.numpy()
        traj.append(x.copy())
        if hasattr(sched, "this_order"):
            orders.append(sched.this_order)
    assert np.isfinite(x).all(), f"{name}: non-finite result"
    rows = keep_rows(n, range(496, 504))
    outs_idx = [k for k in rows if k < n]
    tensors = {
        "timesteps": ts,
        "sigmas": sched.sigmas.numpy().astype(np.float64),
        "model_t": np.array(model_t),
        "model_alpha": np.array(alphas),
        "model_sigma": np.array(sigmas_m),
        "model_out": np.stack([outs[k] for k in outs_idx]),
        "model_out_index": np.array(outs_idx, dtype=np.float64),
        "traj": np.stack([traj[k] for k in rows]),
        "traj_index": np.array(rows, dtype=np.float64),
        "x_init": traj[0],
        "x_final": x,
    }
    entry = {
        "name": name,
        "source": "diffusers",
        "scheduler_class": cls.__name__,
        "file": f"cases/{name}.safetensors",
        "config": json.loads(sched.to_json_string().replace("-Infinity", '"-Infinity"')),
        "num_inference_steps": steps,
        "step_kwargs": {},
        "prediction_type": "epsilon",
        "init_noise_sigma": float(sched.init_noise_sigma),
        "nfe": n,
        "stochastic": noise is not None,
        "noise_rule": {"kind": "splitmix64_irwin_hall12", "seed": noise_seed, "rows": n}
        if noise is not None
        else None,
        "note": note,
    }
    if orders and cls.__name__ != "DPMSolverSinglestepScheduler":
        entry["solver_orders"] = orders
    return entry, tensors


def record_orders(sched):
    """The orders diffusers actually uses: multistep DPM by which update it calls, UniPC by
    its `this_order` (read after each step)."""
    used = []
    if hasattr(sched, "multistep_dpm_solver_third_order_update"):
        for k, method in [
            (1, "dpm_solver_first_order_update"),
            (2, "multistep_dpm_solver_second_order_update"),
            (3, "multistep_dpm_solver_third_order_update"),
        ]:
            f = getattr(sched, method)
            setattr(sched, method, lambda *a, _f=f, _k=k, **kw: (used.append(_k), _f(*a, **kw))[1])
    return used


@functools.cache
def kdiffusion_modules():
    """k_diffusion.sampling and .external without running the package's __init__."""
    spec = importlib.util.find_spec("k_diffusion")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = pkg
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module(
        "k_diffusion.external"
    )


def kdiffusion_case(name, steps, mix, z, alphas_cumprod, noise_seed):
    """`sample_dpmpp_2s_ancestral` (η = 1) on `get_sigmas(steps)` of the ε-denoiser."""
    sampling, external = kdiffusion_modules()
    current = {}
    record = {"t": [], "alpha": [], "sigma": [], "out": []}

    class Analytic(torch.nn.Module):
        """ε̂ at the VP level of the σ being evaluated (the wrapper passes only t)."""

        def forward(self, x, t):
            s = current["sigma"]
            a = 1.0 / math.sqrt(1.0 + s * s)
            eps = mix.eps(x.numpy(), a, s * a)
            record["t"].append(float(t[0]))
            record["alpha"].append(a)
            record["sigma"].append(s * a)
            record["out"].append(eps)
            return torch.from_numpy(eps)

    ac = torch.from_numpy(alphas_cumprod)
    den = external.DiscreteEpsDDPMDenoiser(Analytic(), ac, quantize=False)

    def model(x, sigma):
        current["sigma"] = float(sigma[0])
        return den(x, sigma)

    log_sigmas = den.log_sigmas
    t = torch.linspace(len(log_sigmas) - 1, 0, steps)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    sigmas = sampling.append_zero(((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp())
    assert torch.allclose(sigmas, den.get_sigmas(steps).double(), rtol=1e-5), "get_sigmas"
    rows = splitmix_noise(noise_seed, steps - 1, z.size).reshape(steps - 1, *z.shape)
    draws = iter(torch.from_numpy(r) for r in rows)
    traj = []
    x_init = torch.from_numpy(z) * sigmas[0]
    x = sampling.sample_dpmpp_2s_ancestral(
        model,
        x_init.clone(),
        sigmas,
        callback=lambda info: traj.append(info["x"].numpy().copy()),
        disable=True,
        noise_sampler=lambda s, s_next: next(draws),
    ).numpy()
    traj.append(x)
    starts = sigmas[:-1]
    step_t = [float(den.sigma_to_t(s)) for s in starts]
    n_eval = len(record["t"])
    tensors = {
        "timesteps": np.array(step_t),
        "sigmas": sigmas.numpy(),
        "model_t": np.array(record["t"]),
        "model_alpha": np.array(record["alpha"]),
        "model_sigma": np.array(record["sigma"]),
        "model_out": np.stack(record["out"]),
        "model_out_index": np.arange(n_eval, dtype=np.float64),
        "traj": np.stack(traj),
        "traj_index": np.arange(steps + 1, dtype=np.float64),
        "x_init": x_init.numpy(),
        "x_final": x,
    }
    entry = {
        "name": name,
        "source": "kdiffusion",
        "sampler": "sample_dpmpp_2s_ancestral",
        "preset": "dpmpp-2s-a",
        "betas": "linear 1e-4..0.02, T = 1000",
        "file": f"cases/{name}.safetensors",
        "num_inference_steps": steps,
        "step_kwargs": {"eta": 1.0, "s_noise": 1.0},
        "prediction_type": "epsilon",
        "init_noise_sigma": float(sigmas[0]),
        "solver_orders": [2] * (steps - 1) + [1],
        "nfe": n_eval,
        "stochastic": True,
        "noise_rule": {"kind": "splitmix64_irwin_hall12", "seed": noise_seed, "rows": steps - 1},
        "note": "k-diffusion DPM++ 2S ancestral (DiscreteEpsDDPMDenoiser, quantize=False); noise drawn after every step but the last",
    }
    return entry, tensors


def main():
    common = load_file(str(COMMON))
    mix = Mixture(common)
    z = common["z"]
    dpm = float64_module("diffusers.schedulers.scheduling_dpmsolver_multistep")
    unipc = float64_module("diffusers.schedulers.scheduling_unipc_multistep")
    single = float64_module("diffusers.schedulers.scheduling_dpmsolver_singlestep")
    lin = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    dup = "1000 steps: the DPM linspace rule repeats timestep 500; diffusers 0.42.1 gives NaN, this is it with the duplicate removed (np.unique, first occurrence, as diffusers PR #2969 did)"
    specs = [
        ("dpmpp2m_lin_linspace_1000", dpm.DPMSolverMultistepScheduler, {**lin}, True, dup, None),
        ("dpmpp3m_lin_linspace_1000", dpm.DPMSolverMultistepScheduler, {**lin, "solver_order": 3}, True, dup, None),
        ("sde_dpmpp2m_lin_linspace_1000", dpm.DPMSolverMultistepScheduler, {**lin, "algorithm_type": "sde-dpmsolver++"}, True, dup, 20261130),
        ("unipc2_lin_linspace_1000", unipc.UniPCMultistepScheduler, {**lin}, True, dup, None),
        ("dpmpp2s_lin_1000", single.DPMSolverSinglestepScheduler, {**lin}, False, "1000 steps with the repeated timestep 500: diffusers' singlestep update stays finite, recorded as is", None),
    ]
    cases, files = [], {}
    for name, cls, cfg, dd, note, seed in specs:
        entry, tensors = diffusers_case(name, cls, cfg, 1000, mix, z, dd, note, seed)
        cases.append(entry)
        files[name] = tensors
        print(name, "nfe", entry["nfe"], "x_final max", np.abs(tensors["x_final"]).max())
    ac_linear = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    for name, steps in [("kdiff_dpmpp2sa_lin_10", 10), ("kdiff_dpmpp2sa_lin_15", 15)]:
        entry, tensors = kdiffusion_case(name, steps, mix, z, ac_linear, 7 + steps)
        cases.append(entry)
        files[name] = tensors
        print(name, "nfe", entry["nfe"], "x_final max", np.abs(tensors["x_final"]).max())
    (OUT / "cases").mkdir(parents=True, exist_ok=True)
    for name, tensors in files.items():
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(OUT / f"cases/{name}.safetensors"))
    index = {
        "set": "deediff extra scheduler references",
        "generated_with": {
            "diffusers": importlib.import_module("diffusers").__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "k_diffusion": "0.1.1.post1",
            "script": "scripts/make_schedule_extra_references.py",
        },
        "common_file": "../schedules/common.safetensors",
        "cases": cases,
    }
    text = json.dumps(index, indent=1)
    # Number lists (timesteps, orders) on one line each, so the index stays readable.
    text = re.sub(r"\[[-+\d\s,.eE]+\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    (OUT / "index.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
