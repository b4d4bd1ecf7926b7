#!/usr/bin/env python3
"""bench/uvit_forward, PyTorch side: the official U-ViT forward on the weights the Rust bench wrote.

Run the Rust side first (it writes weights, inputs and its own timings):
    RAYON_NUM_THREADS=2 cargo bench -p deediff-unet --bench uvit_forward
    python3 bench/uvit_forward.py            # [--dir target/bench-uvit]
The model below is U-ViT's libs/uvit.py (unconditional, conv, skips, scaled_dot_product_attention
as the official code selects on torch 2) built from scripts/train_torch.py's blocks, which that
script's `check` compares with the official outputs. Prints ms/forward medians, deediff/PyTorch ratios and
GFLOP/s against each side's measured matmul peak.
"""
import argparse, json, math, os, statistics, struct, sys, time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from train_torch import Block, timestep_embedding  # the official block, checked against U-ViT



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
    def __init__(self, img, patch, C, dim, depth, heads):
        super().__init__()
        self.patch, self.C, self.dim = patch, C, dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(C, dim, patch, patch)
        L = (img // patch) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + L, dim))
        blk = lambda skip: Block(dim, heads, 4.0, False, skip)
        self.in_blocks = nn.ModuleList([blk(False) for _ in range(depth // 2)])
        self.mid_block = blk(False)
        self.out_blocks = nn.ModuleList([blk(True) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch * patch * C)
        self.final_layer = nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x, t, blocks=None):
        n = 2 * len(self.in_blocks) + 1 if blocks is None else blocks
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        time_token = timestep_embedding(t, self.dim).unsqueeze(1)
        x = torch.cat([time_token, x], 1) + self.pos_embed
        order = list(self.in_blocks) + [self.mid_block] + list(self.out_blocks)
        skips = []
        for i, blk in enumerate(order[:n]):
            if i < len(self.in_blocks):
                x = blk(x)
                skips.append(x)
            elif i == len(self.in_blocks):
                x = blk(x)
            else:
                x = blk(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, 1:]
        B, L, _ = x.shape
        g, p = int(math.isqrt(L)), self.patch
        x = x.reshape(B, g, g, p, p, self.C).permute(0, 5, 1, 3, 2, 4).reshape(B, self.C, g * p, g * p)
        return self.final_layer(x)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(f, reps):
    """(median, min) seconds after one warm-up; the min because the machine may be shared."""
    f()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "..", "target", "bench-uvit"))
    ap.add_argument("--device", default="cpu", help="cpu (2 threads, like the Rust side) or cuda (fp32, TF32 off)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(2)
    else:  # deediff's cuBLAS GEMMs are full fp32: compare like with like
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rust = json.load(open(os.path.join(args.dir, "rust.json")))
    a, b = torch.randn(1024, 1024, device=dev), torch.randn(1024, 1024, device=dev)
    peak = 2 * 1024**3 / median_time(lambda: a @ b, 10)[1] / 1e9
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, matmul peak (best of 10, 1024³) {peak:.1f} GFLOP/s "
          f"(deediff/candle {rust['matmul_peak_gflops']:.1f})")
    models = {}
    print(f"{'config':14} {'deediff impl':12} {'batch':>5} {'blocks':>7} {'deediff ms':>11} {'torch ms':>9} "
          f"{'ratio':>6} {'(min ratio)':>11} {'deediff GF/s':>12} {'%peak':>6} {'torch GF/s':>10} {'%peak':>6}")
    torch_times = {}
    for row in rust["rows"]:
        name = row["config"]
        if name not in models:
            cfg = json.load(open(os.path.join(args.dir, f"{name}.config.json")))
            m = UViT(cfg["img_size"], cfg["patch_size"], cfg["in_chans"], cfg["embed_dim"], cfg["depth"], cfg["num_heads"])
            m.load_state_dict(load_safetensors(os.path.join(args.dir, f"{name}.safetensors")), strict=True)
            m.eval().to(dev)
            chk = {k: v.to(dev) for k, v in load_safetensors(os.path.join(args.dir, f"{name}.check.safetensors")).items()}
            with torch.no_grad():
                diff = (m(chk["x"], chk["t"]) - chk["eps"]).abs().max().item()
            print(f"{name}: max |eps_torch - eps_deediff| = {diff:.2e} (batch 1, same weights and input)")
            models[name] = (m, cfg)
        m, cfg = models[name]
        B = row["batch"]
        x = torch.randn(B, cfg["in_chans"], cfg["img_size"], cfg["img_size"], device=dev)
        t = torch.tensor([(i * 997) % 1000 for i in range(B)], dtype=torch.float32, device=dev)
        key = (name, B, row["blocks"])
        if key not in torch_times:
            with torch.no_grad():
                torch_times[key] = median_time(lambda: m(x, t, row["blocks"]), 9 if B == 1 else 5)
        s, s_min = torch_times[key]
        ms = s * 1e3
        gf_t, gf_r = row["gflop"] / s, row["gflop"] / (row["ms"] / 1e3)
        print(f"{name:14} {row['impl']:12} {B:5} {row['blocks']:>3}/{row['num_blocks']:<3} {row['ms']:11.2f} "
              f"{ms:9.2f} {row['ms'] / ms:6.2f} {row['min_ms'] / (s_min * 1e3):11.2f} {gf_r:12.1f} "
              f"{100 * gf_r / rust['matmul_peak_gflops']:5.1f}% {gf_t:10.1f} {100 * gf_t / peak:5.1f}%")


if __name__ == "__main__":
    main()
