#!/usr/bin/env python3
"""FID half of scripts/gpu_check.sh, run on the GPU machine (no network there).

The real FID Inception weights (95 MB) cannot travel, so both tools use the hash-initialised
weights of the reference README §2 (`eval/src/hashinit.rs`, ported here with numpy):

  gpu_check_fid.py weights OUT.safetensors   # the hash weights in pytorch-fid names, for `fid --weights`
  gpu_check_fid.py images DIR N              # N random 32×32 PNGs (CIFAR-sized)
  gpu_check_fid.py torch DIR OUT.npz [--tf32] # pytorch-fid's statistics on cuda; prints images/s
  gpu_check_fid.py compare A.npz B.npz       # max |Δmu|, max |Δsigma| of two statistics files
"""
import os
import sys
import time

import numpy as np

G = np.uint64(0x9E3779B97F4A7C15)


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def hash_uniforms(name, n):
    """splitmix64 is counter-based: state_k = h + k·G, so the stream vectorises."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + np.arange(1, n + 1, dtype=np.uint64) * G
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0)


def hash_tensor(name, shape):
    u = hash_uniforms(name, int(np.prod(shape))).reshape(shape)
    one, two = np.float32(1.0), np.float32(2.0)
    if name.endswith("conv.weight"):
        s = np.float32(np.sqrt(6.0 / float(np.prod(shape[1:]))))
        return (u * two - one) * s
    if name.endswith("bn.weight"):
        return np.float32(0.75) + np.float32(0.5) * u
    if name.endswith("bn.bias") or name.endswith("bn.running_mean"):
        return np.float32(0.2) * (u * two - one)
    if name.endswith("bn.running_var"):
        return np.float32(0.5) + np.float32(1.5) * u
    return np.zeros(shape, np.float32)


def hash_state_dict():
    import torch
    import torchvision

    template = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008
    ).state_dict()
    out = {}
    for k, v in template.items():
        if k.endswith("num_batches_tracked"):
            out[k] = v
        else:
            out[k] = torch.from_numpy(hash_tensor(k, tuple(v.shape)))
    return out


def main():
    cmd = sys.argv[1]
    if cmd == "weights":
        from safetensors.torch import save_file

        sd = {k: v for k, v in hash_state_dict().items() if ".conv." in k or ".bn." in k}
        save_file({k: v for k, v in sd.items() if v.dtype.is_floating_point}, sys.argv[2])
    elif cmd == "images":
        from PIL import Image

        out, n = sys.argv[2], int(sys.argv[3])
        rng = np.random.default_rng(0)
        os.makedirs(out, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f"{out}/{i:05d}.png")
    elif cmd == "torch":
        import torch
        import pytorch_fid.inception as inc
        from pytorch_fid import fid_score

        torch.backends.cudnn.allow_tf32 = "--tf32" in sys.argv
        torch.backends.cuda.matmul.allow_tf32 = "--tf32" in sys.argv
        sd = hash_state_dict()
        inc.load_state_dict_from_url = lambda *a, **k: sd
        device = os.environ.get("FID_DEVICE", "cuda")  # cpu: to try this script without a GPU
        t0 = time.perf_counter()
        fid_score.save_fid_stats([sys.argv[2], sys.argv[3]], 50, device, 2048, num_workers=8)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = len([f for f in os.listdir(sys.argv[2]) if f.endswith(".png")])
        print(f"pytorch-fid (TF32 {'on' if '--tf32' in sys.argv else 'off'}): {n} images in {dt:.2f} s = {n / dt:.0f} images/s")
    elif cmd == "compare":
        a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
        dmu = np.abs(a["mu"] - b["mu"]).max()
        dsig = np.abs(a["sigma"] - b["sigma"]).max()
        ok = dmu <= 1e-4 and dsig <= 1e-4
        print(f"max |Δmu| {dmu:.2e}, max |Δsigma| {dsig:.2e}: {'PASS' if ok else 'FAIL'} (≤ 1e-4)")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
