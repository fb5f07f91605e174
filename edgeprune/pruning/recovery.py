"""Recovery after pruning: BatchNorm recalibration, then a short fine-tune with the unpruned
model as a distillation teacher, in the optimizer family the model was trained with, then
BatchNorm recalibrated once more on the fine-tuned weights.

One-shot pruning at 0.5 leaves a ResNet-20 near chance level (BN recalibration alone: 17%);
an epoch of distillation brings it back above 90%.

`SoftTargets` and `quick_distill` are the estimate fidelity's tiny fine-tune: a few steps of
the same distillation on training batches whose teacher logits were computed once, so that
thousands of estimates share one pass of the teacher.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from edgeprune.data import LabeledData
from edgeprune.errors import BadInputError

MAX_BATCH, MIN_BATCH = 128, 16


@dataclass
class RecoveryConfig:
    """How a pruned model recovers.

    Args:
        epochs: fine-tune epochs (0: BatchNorm recalibration only).
        lr: learning rate (None: the checkpoint's optimizer family at a reduced rate).
        distill: weight of the teacher's soft targets (0: plain cross-entropy).
    """

    epochs: int = 2
    lr: Optional[float] = None
    distill: float = 0.5
    seed: int = 0
    progress: bool = True
    min_steps: int = 400

    def batch_size(self, samples: int) -> int:
        """128, or smaller (down to 16) so the fine-tune takes at least `min_steps` steps: one
        epoch of 3000 images at 128 is 23 steps, too few to recover a net pruned to half
        (GhostNet: 34% after 23 steps, tests/conformance)."""
        return int(min(MAX_BATCH, max(MIN_BATCH, samples * self.epochs // max(self.min_steps, 1))))

    def __post_init__(self) -> None:
        if self.epochs < 0 or not 0 <= self.distill <= 1 or (self.lr is not None and self.lr <= 0):
            raise BadInputError(f"bad recovery settings: epochs={self.epochs}, lr={self.lr}, distill={self.distill}")


def recover(model: nn.Module, teacher: Optional[nn.Module], data: LabeledData, metadata: Dict[str, Any],
            cfg: Optional[RecoveryConfig] = None, arch: str = "") -> Dict[str, Any]:
    """Recalibrate BatchNorm and fine-tune `model` in place; returns what was done (for the
    checkpoint's metadata). `metadata` and `arch` are the unpruned checkpoint's: they say
    which optimizer family the model was trained with."""
    from edgeprune.train import finetune, finetune_recipe, recalibrate_bn

    cfg = cfg or RecoveryConfig()
    recalibrate_bn(model, data)
    recipe = finetune_recipe(metadata, arch)
    if cfg.lr is not None:
        recipe["lr"] = cfg.lr
    batch_size = cfg.batch_size(len(data))
    if cfg.epochs > 0:
        finetune(model, data, cfg.epochs, recipe["lr"], seed=cfg.seed, progress=cfg.progress,
                 teacher=teacher, distill=cfg.distill if teacher is not None else 0.0,
                 optimizer=recipe["optimizer"], batch_size=batch_size)
        # A short fine-tune leaves the running statistics behind the weights (momentum 0.1
        # over a few hundred steps): measured on the bench's 20 ResNet-20 specs at 50% of the
        # MACs, one epoch of 4000 images gave 83-97% without this pass and 95-97.5% with it.
        recalibrate_bn(model, data)
    return {"bn_recalibrated": True, **asdict(cfg), "batch_size": batch_size, **recipe}


@dataclass
class SoftTargets:
    """Training batches with the unpruned model's logits on them, computed once."""

    batches: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (images, labels, teacher logits)

    @classmethod
    def of(cls, teacher: nn.Module, data: LabeledData, steps: int, batch_size: int, seed: int = 0) -> "SoftTargets":
        """`steps` shuffled batches of `data` (fewer when it is small) and `teacher`'s logits."""
        batches = []
        teacher.eval()
        with torch.no_grad():
            for x, y in data.subset(steps * batch_size).loader(batch_size, shuffle=True, seed=seed):
                batches.append((x, y, teacher(x)))
        return cls(batches)


def quick_distill(model: nn.Module, targets: SoftTargets, metadata: Dict[str, Any], arch: str = "",
                  distill: float = 0.5) -> None:
    """One pass over `targets` in place: the recovery's loss (cross-entropy mixed with the
    teacher's softened logits) in the checkpoint's optimizer family, its lr schedule squeezed
    into these few steps. BatchNorm's running statistics are left for the caller to
    recalibrate (training batches use their own)."""
    from edgeprune.train import TrainConfig, finetune_recipe, make_optimizer, recovery_loss

    recipe = finetune_recipe(metadata, arch)
    cfg = TrainConfig(epochs=1, lr=recipe["lr"], optimizer=recipe["optimizer"], progress=False)
    opt, sched = make_optimizer(model, cfg, len(targets.batches))
    model.train()
    for x, y, teacher_logits in targets.batches:
        loss = recovery_loss(model(x), y, teacher_logits, distill, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
