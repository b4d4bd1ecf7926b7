#!/usr/bin/env python3
"""bench/uvit_forward: deediff's U-ViT forward vs the official U-ViT forward in PyTorch, interleaved.

    python3 bench/uvit_forward.py [--rounds 7] [--threads N] [--force] [--bf16]   (or bench/vs_pytorch.sh)

--bf16 adds deediff `--dtype bf16` (AMX tiles) against PyTorch f32 and PyTorch bf16 autocast.

Models: U-ViT-S/2 in its CIFAR-10 configuration (img 32, patch 2, D 512, depth 12, 8 heads,
qkv_bias False), the small config (patch 4, D 256) — random weights written by the Rust side — and
the embedded default model (`uvit_t2i`, random text context); batch 1 and 16, full depth.
The PyTorch side is U-ViT's libs/uvit.py (unconditional, conv, skips) and libs/uvit_t2i.py built
from scripts/train_torch.py's blocks (that script's `check` compares them with the official
outputs); each model is cross-checked here against deediff's output (max |Δ| printed).

Protocol: refuses to run when the 1-minute load average exceeds 0.5 (bench/benchenv.py); prints the
CPU; both sides use the same thread count; the Rust side is one long-lived process (model loaded
once) and the two sides alternate round by round, one warm-up forward before each round; the
table gives medians over rounds (≥ 5) of each round's median, and each side's own matmul GFLOP/s
at the model's shapes (deediff: the kernel its dispatcher picks).
"""
import argparse, json, math, os, statistics, struct, subprocess, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, HERE)
from train_torch import Block, UViTT2I, timestep_embedding  # the official blocks, checked against U-ViT
import benchenv

CONFIGS = ["uvit_s2_cifar", "uvit_small_p4", "default"]
BATCHES = [1, 16]


def load_safetensors(path):
    """Minimal safetensors reader (f32 only) so no extra package is needed."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"]).copy())
    return out


class UViT(nn.Module):
    """U-ViT's libs/uvit.py, unconditional, with conv and skips."""

    def __init__(self, c):
        super().__init__()
        img, patch, C, dim, depth, heads = (c["img_size"], c["patch_size"], c["in_chans"], c["embed_dim"],
                                            c["depth"], c["num_heads"])
        self.patch, self.C, self.dim = patch, C, dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(C, dim, patch, patch)
        L = (img // patch) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + L, dim))
        blk = lambda skip: Block(dim, heads, c["mlp_ratio"], c["qkv_bias"], skip)
        self.in_blocks = nn.ModuleList([blk(False) for _ in range(depth // 2)])
        self.mid_block = blk(False)
        self.out_blocks = nn.ModuleList([blk(True) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch * patch * C)
        self.final_layer = nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x, t):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        time_token = timestep_embedding(t, self.dim).unsqueeze(1)
        x = torch.cat([time_token, x], 1) + self.pos_embed
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, 1:]
        B, L, _ = x.shape
        g, p = int(math.isqrt(L)), self.patch
        x = x.reshape(B, g, g, p, p, self.C).permute(0, 5, 1, 3, 2, 4).reshape(B, self.C, g * p, g * p)
        return self.final_layer(x)


def torch_model(bench_dir, name):
    """(forward(x, t, context), config) for a benchmark config, weights as the Rust side uses."""
    c = json.load(open(os.path.join(bench_dir, f"{name}.config.json")))
    if c["module"] == "uvit_t2i":
        m = UViTT2I(c)
        path = os.path.join(ROOT, "models", "uvit_t2i_fashion_digits.safetensors")
    else:
        m = UViT(c)
        path = os.path.join(bench_dir, f"{name}.safetensors")
    sd = load_safetensors(path)
    m.load_state_dict({k: v for k, v in sd.items() if k in m.state_dict()}, strict=True)
    m.eval()
    fwd = (lambda x, t, ctx: m(x, t, ctx)) if c["module"] == "uvit_t2i" else (lambda x, t, ctx: m(x, t))
    return fwd, c


# The timed sides, interleaved in this order each round.
SIDES = [("deediff", "f32"), ("torch", "f32"), ("deediff", "bf16"), ("torch", "bf16")]


def inputs(c, batch):
    x = torch.randn(batch, c["in_chans"], c["img_size"], c["img_size"])
    t = torch.tensor([(i * 997) % 1000 for i in range(batch)], dtype=torch.float32)
    ctx = torch.randn(batch, c["num_clip_token"], c["clip_dim"]) if c["module"] == "uvit_t2i" else None
    return x, t, ctx


def torch_round(fwd, args, reps, bf16=False):
    # bf16: PyTorch's own mixed precision (oneDNN, AMX where the CPU has it), the peer of --dtype bf16.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fwd(*args)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fwd(*args)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cargo_bench(name, *args, stdin=None, threads=2):
    cmd = ["cargo", "bench", "-q", "-p", "deediff-unet", "--bench", name, "--", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, text=True,
                            env=benchenv.rust_env(threads))


def matmul_table(threads, rounds):
    """Each side's GFLOP/s at the models' matmul shapes: deediff's dispatcher (matmul_shapes bench)
    and torch (F.linear, same thread count; attention tiles on one thread, as both run them).
    The sides alternate sweep by sweep (one timed round of every shape each), so a phase of the
    machine hits both alike; medians of `rounds` sweeps."""
    ours, theirs, rows = {}, {}, None
    for _ in range(rounds):
        p = cargo_bench("matmul_shapes", "--json", "--rounds", "1", threads=threads)
        sweep = [json.loads(l) for l in p.stdout if l.startswith("{")]
        if p.wait() != 0 or not sweep:
            sys.exit("matmul_shapes bench failed")
        rows = sweep
        for r in sweep:
            key = (r["model"], r["layer"])
            ours.setdefault(key, []).append(r["gflops"])
            theirs.setdefault(key, []).append(torch_gflops(r, threads))
    torch.set_num_threads(threads)
    print("\n| model | layer | m×n×k | deediff kernel | deediff GFLOP/s | PyTorch GFLOP/s | deediff/PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        key = (r["model"], r["layer"])
        g, gf = statistics.median(ours[key]), statistics.median(theirs[key])
        print(f"| {r['model']} | {r['layer']} | {r['m']}×{r['n']}×{r['k']} | {r['kernel']} | {g:.1f} | {gf:.1f} | "
              f"{g / gf:.2f} |")


def torch_gflops(r, threads):
    """F.linear's GFLOP/s at one shape: a warm-up and one timing of ~2 ms of repetitions."""
    m, n, k = r["m"], r["n"], r["k"]
    x, w = torch.randn(m, k), torch.randn(n, k)
    torch.set_num_threads(threads if r["parallel"] else 1)
    reps = max(1, int(2e-3 * 20e9 / (2 * m * n * k)))
    F.linear(x, w)
    t0 = time.perf_counter()
    for _ in range(reps):
        F.linear(x, w)
    return 2 * m * n * k * reps / (time.perf_counter() - t0) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.path.join(ROOT, "target", "bench-uvit"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--force", action="store_true", help="run on a loaded machine (result not for recording)")
    ap.add_argument("--bf16", action="store_true",
                    help="also time deediff --dtype bf16 (AMX) against PyTorch f32 and PyTorch bf16 autocast")
    args = ap.parse_args()
    if args.rounds < 5:
        sys.exit("--rounds: at least 5 (medians of ≥ 5)")
    head = benchenv.header(args.force)
    torch.set_num_threads(args.threads)
    if cargo_bench("uvit_forward", "prepare", "--dir", args.dir, threads=args.threads).wait() != 0:
        sys.exit("uvit_forward prepare failed")
    print(f"torch {torch.__version__}, {args.threads} threads each side")
    matmul_table(args.threads, args.rounds)
    rust = cargo_bench("uvit_forward", "serve", "--dir", args.dir, stdin=subprocess.PIPE, threads=args.threads)

    def rust_round(name, batch, reps, dtype="f32"):
        rust.stdin.write(f"{name} {batch} {reps} {dtype}\n")
        rust.stdin.flush()
        line = rust.stdout.readline()
        if not line:
            sys.exit("uvit_forward serve ended early")
        return statistics.median(json.loads(line)["seconds"])

    print()
    results = []
    for name in CONFIGS:
        fwd, c = torch_model(args.dir, name)
        chk = load_safetensors(os.path.join(args.dir, f"{name}.check.safetensors"))
        with torch.no_grad():
            diff = (fwd(chk["x"], chk["t"], chk.get("context")) - chk["eps"]).abs().max().item()
        print(f"{name}: max |eps_torch − eps_deediff| = {diff:.2e} (batch 1, same weights and input)")
        if diff > 1e-3:
            sys.exit(f"{name}: the two sides disagree; not timing")
        for batch in BATCHES:
            x = inputs(c, batch)
            reps = 5 if batch == 1 else 2
            times = {side: [] for side in SIDES[:4 if args.bf16 else 2]}
            for _ in range(args.rounds):
                for side in times:
                    times[side].append(rust_round(name, batch, reps, side[1]) if side[0] == "deediff"
                                       else torch_round(fwd, x, reps, side[1] == "bf16"))
                    time.sleep(0.2)  # let the other side's worker threads go to sleep
            results.append((name, batch, {side: statistics.median(ts) for side, ts in times.items()}))
    rust.stdin.close()
    rust.wait()
    print(f"\n{head}\n")
    print("| model | batch | deediff ms | PyTorch ms | deediff/PyTorch |")
    print("|---|---|---|---|---|")
    for name, batch, med in results:
        o, t = med[SIDES[0]], med[SIDES[1]]
        print(f"| {name} | {batch} | {o * 1e3:.1f} | {t * 1e3:.1f} | **{o / t:.2f}×** |")
    if args.bf16:
        print("\n| model | batch | deediff bf16 ms | PyTorch f32 ms | PyTorch bf16 ms | deediff bf16 / PyTorch f32 "
              "| deediff bf16 / PyTorch bf16 |")
        print("|---|---|---|---|---|---|---|")
        for name, batch, med in results:
            o, t, tb = med[SIDES[2]], med[SIDES[1]], med[SIDES[3]]
            print(f"| {name} | {batch} | {o * 1e3:.1f} | {t * 1e3:.1f} | {tb * 1e3:.1f} | **{o / t:.2f}×** "
                  f"| **{o / tb:.2f}×** |")


if __name__ == "__main__":
    main()
