"""Helpers for the weight-level CDR tests and bench/stego_eval.py: a small CNN trained on
scikit-learn's bundled load_digits (no download), deterministic, a few seconds of CPU."""
from __future__ import annotations

import numpy as np


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)


def make_cnn():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_cnn(seed=0, epochs=12):
    """Returns (model, (xte, yte)). Seeded; about 2-5 s on one core."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    xtr, xte, ytr, yte = digits_split()
    model = make_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model, (xte, yte)


def accuracy(state_dict, xte, yte):
    """Top-1 accuracy in percent of a state dict (any float dtype; evaluated in float32)."""
    import torch

    model = make_cnn()
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(xte)).argmax(1).numpy()
    return 100.0 * float((pred == yte).mean())
