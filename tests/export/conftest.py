"""Fixtures for export tests: every zoo model, briefly trained, unpruned and 50% pruned.

Weights are random except BatchNorm statistics (recomputed on MNIST) and the classifier head,
fitted on MNIST features by ridge regression (a linear probe): logits then have a real classifier's margins, whereas untrained nets have
near-tied logits whose top-1 flips under any rounding; training every model would take minutes.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Dict

import pytest
import torch

from edgeprune.models import Checkpoint, create_model, list_models

INPUT_SHAPE = [1, 28, 28]
PROBE_SAMPLES = 512
VARIANTS = [(name, pruned) for name in list_models() for pruned in (False, True)]


def variant_id(variant) -> str:
    name, pruned = variant
    return f"{name}-{'pruned50' if pruned else 'full'}"


def _recalibrate_bn(model: torch.nn.Module, data, n: int = PROBE_SAMPLES) -> None:
    """Set BatchNorm running statistics from data, as training would (no weight updates)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, n, 64):
            model(data.x[start:start + 64])
    model.eval()


def _probe(model: torch.nn.Module, data, n: int = PROBE_SAMPLES) -> torch.nn.Module:
    """Fit the classifier head by ridge regression on the model's own features (a linear probe).

    Seconds instead of minutes of training, and logits with the margins of a real classifier.
    """
    from edgeprune.pruning import head_layer

    _recalibrate_bn(model, data, n)
    head = dict(model.named_modules())[head_layer(model)]
    feats = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
    with torch.no_grad():
        model(data.x[:n])
    hook.remove()
    x = feats[0].flatten(2).mean(2) if feats[0].dim() == 4 else feats[0]
    x = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    y = torch.nn.functional.one_hot(data.y[:n], 10).double() * 20 - 2
    gram = x.T @ x
    ridge = 0.1 * gram.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram + ridge, x.T @ y).float()
    with torch.no_grad():
        head.weight.copy_(w[:-1].T.reshape(head.weight.shape))
        head.bias.copy_(w[-1])
    return model


def _checkpoint(model: torch.nn.Module, arch: str) -> Checkpoint:
    meta = {"input_shape": INPUT_SHAPE, "num_classes": 10, "dataset": "mnist"}
    return Checkpoint(model=model.eval(), arch=arch, metadata=meta)


class Zoo:
    """Lazily trained zoo checkpoints, shared by every test of the session."""

    def __init__(self, train_data):
        self._train = train_data
        self._cache: Dict[tuple, Checkpoint] = {}

    def get(self, name: str, pruned: bool = False) -> Checkpoint:
        key = (name, pruned)
        if key not in self._cache:
            self._cache[key] = self._pruned(name) if pruned else self._full(name)
        return self._cache[key]

    def _full(self, name: str) -> Checkpoint:
        torch.manual_seed(0)
        return _checkpoint(_probe(create_model(name), self._train), name)

    def _pruned(self, name: str) -> Checkpoint:
        from edgeprune.pruning import PruneConfig, prune

        model = create_model(name)
        model.load_state_dict(self.get(name).model.state_dict())
        prune(model, PruneConfig(ratio=0.5), torch.zeros(1, *INPUT_SHAPE))
        return _checkpoint(_probe(model, self._train), name)


@pytest.fixture(scope="session")
def zoo(mnist_train) -> Zoo:
    return Zoo(mnist_train)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield
