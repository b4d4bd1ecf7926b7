#!/usr/bin/env python3
"""FID side by side: deediff-eval (Rust) vs pytorch-fid 0.3.0 (torch CPU, 2 threads).

Both run the same network with the same imported weights (the safetensors that
`scripts/fetch_fid_weights.sh` writes; pytorch-fid's download is replaced by it, no network).
Measures 2048-d feature throughput on 28x28 and 32x32 inputs (upsampled to 299, so a full
299x299 Inception forward each) and the Fréchet distance at D=2048 against scipy's sqrtm.

    python3 bench/fid.py [--images 50] [--reps 5] [--threads N] [--skip-frechet] [--force]

Refuses to run when the 1-minute load average exceeds 0.5 (bench/benchenv.py); the two sides
alternate rep by rep with the same thread count; medians of ≥ 5 reps.
"""
import argparse, json, os, pathlib, platform, statistics, subprocess, sys, time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import benchenv


def cache_dir():
    for var, sub in (("DEEDIFF_CACHE", ""), ("XDG_CACHE_HOME", "deediff")):
        if os.environ.get(var):
            return pathlib.Path(os.environ[var]) / sub
    return pathlib.Path.home() / ".cache" / "deediff"


def load_safetensors(path):
    """Minimal reader (f32 only, as our importer writes): 8-byte header size, JSON, raw data."""
    raw = pathlib.Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, base = json.loads(raw[8:8 + n]), 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        lo, hi = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(raw[base + lo:base + hi], "<f4").reshape(info["shape"]).copy())
    return out


def pytorch_fid_model(weights):
    import pytorch_fid.inception as pi
    sd = load_safetensors(weights)
    sd["fc.weight"] = torch.zeros(1008, 2048)
    sd["fc.bias"] = torch.zeros(1008)
    pi.load_state_dict_from_url = lambda *a, **k: sd  # no download: our imported weights
    return pi.InceptionV3([pi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def rust_bench(images, reps, frechet, threads):
    cmd = ["cargo", "bench", "-q", "-p", "deediff-eval", "--bench", "fid", "--",
           "--images", str(images), "--reps", str(reps)]
    if not frechet:
        cmd.append("--skip-frechet")
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True,
                         env=benchenv.rust_env(threads)).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def torch_seconds(model, x):
    with torch.no_grad():
        t = time.perf_counter()
        model(x)
        return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-frechet", action="store_true")
    ap.add_argument("--force", action="store_true", help="run on a loaded machine (result not for recording)")
    args = ap.parse_args()
    if args.reps < 5:
        sys.exit("--reps: at least 5 (medians of ≥ 5)")
    head = benchenv.header(args.force)
    torch.set_num_threads(args.threads)
    weights = cache_dir() / "pt_inception-2015-12-05.safetensors"
    if not weights.exists():
        raise SystemExit(f"{weights}: missing; run scripts/fetch_fid_weights.sh")
    model = pytorch_fid_model(weights)
    rng = np.random.default_rng(7)
    inputs = {side: torch.from_numpy(rng.integers(0, 256, (args.images, 3, side, side)).astype(np.float32) / 255)
              for side in (28, 32)}
    with torch.no_grad():
        model(inputs[28][:2])
    # Alternate the two sides rep by rep so both see the same background load on a shared machine.
    ours, theirs = {28: [], 32: []}, {28: [], 32: []}
    for _ in range(args.reps):
        for r in rust_bench(args.images, 1, False, args.threads):
            ours[r["side"]].append(r["images_per_s"])
        for side, x in inputs.items():
            theirs[side].append(args.images / torch_seconds(model, x))
    rows = []
    for side in (28, 32):
        o, t = statistics.median(ours[side]), statistics.median(theirs[side])
        rows.append((f"features {side}x{side} -> 299, 2048-d (images/s)", o, t, o / t))
    if not args.skip_frechet:
        import scipy.linalg
        from pytorch_fid.fid_score import calculate_frechet_distance
        n, d = 4096, 2048
        a, b = rng.random((n, d)) ** 2, 1.1 * rng.random((n, d)) ** 2
        m1, s1, m2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        t = time.perf_counter()
        scipy.linalg.sqrtm(s1.dot(s2))
        sqrtm_s = time.perf_counter() - t
        t = time.perf_counter()
        calculate_frechet_distance(m1, s1, m2, s2)
        fid_s = time.perf_counter() - t
        ours = next(r for r in rust_bench(2, 1, True, args.threads) if r["bench"] == "frechet")["seconds"]
        rows.append(("Fréchet distance D=2048, s (vs scipy sqrtm)", ours, sqrtm_s, ours / sqrtm_s))
        rows.append(("Fréchet distance D=2048, s (vs pytorch-fid total)", ours, fid_s, ours / fid_s))
    print(f"{head}\ntorch {torch.__version__} {torch.get_num_threads()} threads each side, python "
          f"{platform.python_version()}, {args.images} images, median of {args.reps}")
    print("| measurement | deediff-eval | pytorch-fid / scipy | ratio |")
    print("|---|---|---|---|")
    for name, ours, theirs, ratio in rows:
        print(f"| {name} | {ours:.3f} | {theirs:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
