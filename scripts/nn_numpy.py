"""Small dense networks in numpy for the candle models: forward passes in float32 exactly as
Ferrite's candle backend computes them (crates/ferrite-models/src/mlp.rs), float64 training
with hand-written gradients and Adam, and the safetensors export.

Layers follow candle's naming: an MLP's layer i is `layers.{i}.weight` [out, in] and
`layers.{i}.bias`, ReLU between layers and none after the last; Wide & Deep adds `wide.weight`
[out, in] and `wide.bias` and prefixes the MLP with `deep.`. Used by scripts/train_recs_models.py
and scripts/train_pricing_model.py.
"""

import numpy as np


def init_mlp(rng, dims):
    """He-initialised weights for dims [in, hidden.., out] (float64 while training)."""
    return [(rng.normal(0, np.sqrt(2.0 / a), (b, a)), np.zeros(b)) for a, b in zip(dims[:-1], dims[1:])]


def mlp_forward(layers, x):
    """Returns the output and the per-layer inputs and pre-activations for the backward pass."""
    acts, h = [], x
    for i, (w, b) in enumerate(layers):
        z = h @ w.T + b
        acts.append((h, z))
        h = np.maximum(z, 0) if i + 1 < len(layers) else z
    return h, acts


def mlp_backward(layers, acts, grad):
    """Gradients [(dW, db)] of the layers given d(loss)/d(output)."""
    grads = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        h, z = acts[i]
        if i + 1 < len(layers):
            grad = grad * (z > 0)
        grads[i] = (grad.T @ h, grad.sum(axis=0))
        grad = grad @ layers[i][0]
    return grads


def l2_normalize(z):
    norm = np.maximum(np.sqrt((z * z).sum(axis=1, keepdims=True)), np.finfo(np.float32).tiny)
    return z / norm, norm


def l2_normalize_backward(y, norm, grad):
    return (grad - y * (y * grad).sum(axis=1, keepdims=True)) / norm


class Adam:
    """Adam over a flat list of arrays, updated in place."""

    def __init__(self, params, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
        self.params, self.lr, self.b1, self.b2, self.eps, self.wd = params, lr, b1, b2, eps, weight_decay
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if self.wd and p.ndim == 2:
                g = g + self.wd * p
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def flat(layers):
    return [a for wb in layers for a in wb]


def standardizer(x):
    """Mean and scale per column (scale 1 for a constant column)."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    return mu, np.where(sd > 1e-9, sd, 1.0)


def fold_standardization(w, b, mu, sd):
    """W (x - mu) / sd + b as W' x + b', so that the served layer takes the raw vector."""
    w2 = w / sd[None, :]
    return w2, b - w2 @ mu


def mlp_tensors(layers, prefix=""):
    out = {}
    for i, (w, b) in enumerate(layers):
        out[f"{prefix}layers.{i}.weight"] = np.asarray(w, np.float32)
        out[f"{prefix}layers.{i}.bias"] = np.asarray(b, np.float32)
    return out


def candle_mlp(tensors, x, prefix=""):
    """The served forward pass in float32: the layers as stored, ReLU between them."""
    h = np.asarray(x, np.float32)
    n = sum(1 for k in tensors if k.startswith(prefix + "layers.") and k.endswith(".weight"))
    for i in range(n):
        h = h @ tensors[f"{prefix}layers.{i}.weight"].T + tensors[f"{prefix}layers.{i}.bias"]
        if i + 1 < n:
            h = np.maximum(h, np.float32(0))
    return h.astype(np.float32)


def candle_l2_normalize(y):
    norm = np.maximum(np.sqrt((y * y).sum(axis=1, keepdims=True)), np.finfo(np.float32).tiny)
    return (y / norm).astype(np.float32)


def candle_wide_deep(tensors, x):
    x = np.asarray(x, np.float32)
    wide = x @ tensors["wide.weight"].T + tensors["wide.bias"]
    return (wide + candle_mlp(tensors, x, "deep.")).astype(np.float32)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
