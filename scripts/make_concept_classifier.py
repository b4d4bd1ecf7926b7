#!/usr/bin/env python3
"""Writes sampler/tests/fixtures/concept_classifier.f32: a softmax-regression classifier of the 20
concepts of the default model (Fashion-MNIST classes 0–9, MNIST digits 10–19) on raw pixels in
[0, 1], as little-endian float32 `[20, 785]` (weights, then bias in the last column). The
default-model test classifies samples with it. Prints its accuracy on held-out real images
(Fashion-MNIST test set, the last 1,000 MNIST digits), the yardstick for the test's threshold.

    python3 scripts/train_torch.py pack && python3 scripts/make_concept_classifier.py
"""
import gzip

import numpy as np

data = np.load("runs/pretrain/data.npz")
x, y = data["images"].reshape(-1, 784) / 255.0, data["labels"].astype(np.int64)
digits = np.flatnonzero(y >= 10)
held = digits[np.random.default_rng(0).permutation(len(digits))[:1000]]
train = np.setdiff1d(np.arange(len(y)), held)
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
xt = np.concatenate([np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784) / 255.0, x[held]])
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").read()
yt = np.concatenate([np.frombuffer(raw, np.uint8, offset=8).astype(np.int64), y[held]])

w = np.zeros((785, 20))
xb = np.hstack([x[train], np.ones((len(train), 1))])
m, v = np.zeros_like(w), np.zeros_like(w)
for it in range(1, 301):  # Adam on the mean cross-entropy, full batch
    z = xb @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(train)), y[train]] -= 1
    g = xb.T @ p / len(train) + 1e-4 * w
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    w -= 0.05 * (m / (1 - 0.9 ** it)) / (np.sqrt(v / (1 - 0.999 ** it)) + 1e-8)
pred = (np.hstack([xt, np.ones((len(xt), 1))]) @ w).argmax(1)
print(f"held-out accuracy: fashion {np.mean(pred[:10000] == yt[:10000]):.3f}, "
      f"digits {np.mean(pred[10000:] == yt[10000:]):.3f}")
w.T.astype("<f4").tofile("sampler/tests/fixtures/concept_classifier.f32")
