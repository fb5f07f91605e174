"""Training, fine-tuning and evaluation (top-1 / top-5), with progress bars on stderr."""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from edgeprune._progress import progress as progress_bar
from edgeprune.data import LabeledData
from edgeprune.errors import BadInputError

OPTIMIZERS = ("sgd", "adamw")
# Per optimizer family: (train lr, weight decay). SGD + one-cycle suits the zoo's BN nets;
# AdamW + cosine is the safer default for a user's own model (LayerNorm, GELU, no tuning).
_DEFAULTS = {"sgd": (0.1, 5e-4), "adamw": (1e-3, 0.05)}
# Fine-tuning a trained model restarts in its own optimizer family (SGD 0.05 wrecked
# AdamW-trained models). AdamW rewinds to the training lr, warm-up and cosine included
# (learning-rate rewinding, Renda et al., ICLR 2020): at 0.3x the lr, GhostNet and DenseNet
# pruned to half recovered to 72% and 77% in one epoch, at 1x to 88% and 90%
# (tests/conformance). SGD's one-cycle at half the rate, capped at 0.05, recovers the zoo.
_FINETUNE_FRACTION = {"sgd": 0.5, "adamw": 1.0}
_FINETUNE_DEFAULT_LR = {"sgd": 0.05, "adamw": 3e-4}
_FINETUNE_UNSET_LR = {"sgd": 0.01, "adamw": 3e-4}  # finetune(lr=None): the gentle end


@dataclass
class TrainConfig:
    """SGD with momentum and one-cycle lr, or AdamW with warm-up and cosine decay; light
    shift augmentation. `lr` and `weight_decay` default to the optimizer family's values."""

    epochs: int = 10
    batch_size: int = 128
    lr: Optional[float] = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    shift: int = 2          # random translation in pixels; 0 disables augmentation
    distill: float = 0.0    # weight of the teacher's soft targets (needs a teacher); 0 disables
    temperature: float = 4.0
    seed: int = 0
    threads: Optional[int] = None
    progress: bool = True
    version: int = 2

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadInputError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        lr, weight_decay = _DEFAULTS[self.optimizer]
        self.lr = lr if self.lr is None else float(self.lr)
        self.weight_decay = weight_decay if self.weight_decay is None else float(self.weight_decay)
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.distill <= 1:
            raise BadInputError(
                f"bad training settings: epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}, "
                f"distill={self.distill}")

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: nn.Module, data: LabeledData, cfg: TrainConfig,
          teacher: Optional[nn.Module] = None) -> Dict[str, float]:
    """Train in place; returns the last epoch's mean loss and the wall time.

    With a `teacher` and `cfg.distill` > 0 the loss mixes in the teacher's softened outputs
    (Hinton et al.): how a pruned net recovers what the unpruned one knew.
    """
    _check_data(model, data)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.epochs == 0:
        return {"loss": float("nan"), "seconds": 0.0}
    loader = data.loader(cfg.batch_size, shuffle=True, seed=cfg.seed)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * len(loader))
    start, loss = time.time(), float("nan")
    for epoch in range(cfg.epochs):
        loss = _epoch(model, loader, opt, sched, cfg, f"epoch {epoch + 1}/{cfg.epochs}", teacher)
    model.eval()
    return {"loss": loss, "seconds": time.time() - start}


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int) -> tuple:
    """The optimizer and its per-step lr schedule for `steps` optimizer steps."""
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, nesterov=True)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(steps, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # A short warm-up: Adam's first steps are full-size (its moments start at zero).
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def finetune(model: nn.Module, data: LabeledData, epochs: int = 1, lr: Optional[float] = None,
             seed: int = 0, progress: bool = True, teacher: Optional[nn.Module] = None,
             distill: float = 0.0, optimizer: str = "sgd", batch_size: int = 128) -> Dict[str, float]:
    """Short recovery training after pruning: the model's optimizer family at a small
    learning rate (default: SGD 0.01, AdamW 3e-4; see `finetune_recipe`), and optionally
    the unpruned model as a teacher."""
    if lr is None:
        lr = _FINETUNE_UNSET_LR.get(optimizer, 3e-4)
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=progress, distill=distill,
                      optimizer=optimizer, batch_size=batch_size)
    return train(model, data, cfg, teacher)


def finetune_recipe(metadata: Dict[str, Any], arch: str = "") -> Dict[str, Any]:
    """The fine-tune settings that fit a checkpoint: `{"optimizer": ..., "lr": ...}`.

    The optimizer family it was trained with (metadata["train"]) at a fraction of its
    training lr. Without a record: SGD at 0.05 for zoo models, AdamW at 3e-4 for a
    `package.module:factory` (`arch`), the family a user's own model most likely fits.
    """
    recorded = metadata.get("train") if isinstance(metadata, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    # Checkpoints written before the optimizer was recorded were all trained with SGD.
    family = recorded.get("optimizer", "sgd" if recorded else None)
    train_lr = recorded.get("lr")
    if family not in OPTIMIZERS or not isinstance(train_lr, (int, float)) or train_lr <= 0:
        family = family if family in OPTIMIZERS else ("adamw" if ":" in str(arch) else "sgd")
        return {"optimizer": family, "lr": _FINETUNE_DEFAULT_LR[family]}
    lr = float(train_lr) * _FINETUNE_FRACTION[family]
    if family == "sgd":
        lr = min(lr, _FINETUNE_DEFAULT_LR["sgd"])  # 0.05 recovers the zoo's nets (bench_compress)
    return {"optimizer": family, "lr": lr}


def _epoch(model, loader, opt, sched, cfg: TrainConfig, desc: str, teacher: Optional[nn.Module]) -> float:
    model.train()
    if teacher is not None:
        teacher.eval()
    total, count = 0.0, 0
    bar = progress_bar(loader, desc=desc, enabled=cfg.progress)
    for x, y in bar:
        x = random_shift(x, cfg.shift)
        logits = model(x)
        teacher_logits = None
        if teacher is not None and cfg.distill > 0:
            with torch.no_grad():
                teacher_logits = teacher(x)
        loss = recovery_loss(logits, y, teacher_logits, cfg.distill, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total, count = total + loss.item() * len(y), count + len(y)
        bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(count, 1)


def recovery_loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: Optional[torch.Tensor],
                  distill: float, t: float) -> torch.Tensor:
    """Cross-entropy, mixed with weight `distill` with the KL divergence to the teacher's
    logits softened at temperature `t` (none without teacher logits)."""
    loss = nn.functional.cross_entropy(logits, y)
    if teacher_logits is None or distill <= 0:
        return loss
    soft = nn.functional.softmax(teacher_logits / t, dim=1)
    kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1), soft, reduction="batchmean") * t * t
    return (1 - distill) * loss + distill * kd


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: LabeledData, samples: int = 1024, batch_size: int = 128) -> None:
    """Re-estimate BatchNorm statistics after surgery changed what each layer sees."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches below
    model.train()
    for x, _ in data.subset(samples).loader(batch_size):
        model(x)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()


def random_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate each image by up to `pixels` in x and y (zero fill)."""
    if pixels <= 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pixels,) * 4)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n))
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(-1, x.shape[1], -1, w + 2 * pixels)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return out.gather(3, cols)


@torch.no_grad()
def evaluate(model: nn.Module, data: LabeledData, batch_size: int = 256) -> Dict[str, float]:
    """Top-1 and top-5 accuracy in percent."""
    _check_data(model, data)
    model.eval()
    top1 = top5 = 0
    for x, y in data.loader(batch_size):
        logits = model(x)
        k = min(5, logits.shape[1])
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == y).sum().item()
        top5 += (best == y.view(-1, 1)).any(dim=1).sum().item()
    n = max(len(data), 1)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "samples": len(data)}


def _check_data(model: nn.Module, data: LabeledData) -> None:
    """A wrong input shape or too many classes gets one clear line, not a conv error."""
    if len(data) == 0:
        raise BadInputError("the data set is empty")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x[:1])
    except RuntimeError as exc:
        raise BadInputError(
            f"data of shape {tuple(data.input_shape)} does not fit the model: "
            f"{str(exc).splitlines()[0][:160]}") from None
    finally:
        model.train(was_training)
    if out.shape[1] < data.num_classes:
        raise BadInputError(f"model has {out.shape[1]} outputs but the data has {data.num_classes} classes")
