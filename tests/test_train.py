"""Training raises accuracy, is reproducible with a seed, and rejects mismatched data;
fine-tuning follows the recipe the model was trained with."""
import copy

import pytest
import torch
from torch import nn

from edgeprune.errors import BadInputError
from edgeprune.models import create_model
from edgeprune.train import TrainConfig, evaluate, finetune, finetune_recipe, random_shift, train


def test_training_raises_accuracy(mnist_train, mnist_test):
    torch.manual_seed(0)
    model = create_model("vgg11", width=0.125)
    before = evaluate(model, mnist_test)["top1"]
    train(model, mnist_train.subset(1500), TrainConfig(epochs=2, batch_size=32, lr=0.05, progress=False))
    after = evaluate(model, mnist_test)
    assert before < 25 and after["top1"] > before + 35
    assert after["top5"] >= after["top1"]


def test_seeded_training_is_reproducible(mnist_train):
    data = mnist_train.subset(128)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)  # same init
        model = create_model("resnet20", width=4)
        train(model, data, TrainConfig(epochs=1, batch_size=32, seed=7, progress=False))
        outs.append(model(data.x[:4]))
    assert torch.equal(outs[0], outs[1])


def test_random_shift_moves_pixels_not_mass():
    x = torch.zeros(4, 1, 10, 10)
    x[:, :, 4:6, 4:6] = 1.0
    torch.manual_seed(0)
    shifted = random_shift(x, 2)
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    assert not torch.equal(shifted, x)


def test_wrong_input_shape_is_a_clear_error(mnist_test):
    model = create_model("resnet20", in_channels=3)
    with pytest.raises(BadInputError, match="does not fit the model"):
        evaluate(model, mnist_test)


def test_distillation_pulls_the_student_toward_its_teacher(mnist_train):
    """With distill=1 the labels are ignored: a student trained on wrong labels still learns
    to agree with a teacher that knows the right ones."""
    torch.manual_seed(0)
    teacher = create_model("vgg11", width=0.125)
    train(teacher, mnist_train.subset(1500), TrainConfig(epochs=2, batch_size=32, lr=0.05, progress=False))
    data = mnist_train.subset(1500)
    wrong = type(data)(data.x, (data.y + 1) % 10, data.num_classes, data.name)
    agreement = {}
    for distill in (0.0, 1.0):
        torch.manual_seed(1)
        student = create_model("vgg11", width=0.125)
        cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, distill=distill, progress=False)
        train(student, wrong, cfg, teacher=teacher)
        with torch.no_grad():
            x = mnist_train.x[-500:]
            agreement[distill] = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agreement[1.0] > 0.8 and agreement[0.0] < 0.3


def test_distill_weight_outside_0_1_is_rejected():
    with pytest.raises(BadInputError, match="distill"):
        TrainConfig(distill=1.5)


def test_optimizer_families_have_their_own_defaults():
    sgd, adamw = TrainConfig(), TrainConfig(optimizer="adamw")
    assert (sgd.optimizer, sgd.lr, sgd.weight_decay) == ("sgd", 0.1, 5e-4)
    assert (adamw.lr, adamw.weight_decay) == (1e-3, 0.05)
    assert TrainConfig(optimizer="adamw", lr=3e-3).to_dict()["lr"] == 3e-3
    with pytest.raises(BadInputError, match="unknown optimizer 'adam'"):
        TrainConfig(optimizer="adam")


@pytest.mark.parametrize("metadata, arch, expected", [
    ({"train": {"optimizer": "adamw", "lr": 1e-3}}, "resnet20", {"optimizer": "adamw", "lr": 1e-3}),  # rewound
    ({"train": {"optimizer": "sgd", "lr": 0.1}}, "pkg.mod:net", {"optimizer": "sgd", "lr": 0.05}),
    ({"train": {"optimizer": "sgd", "lr": 0.02}}, "resnet20", {"optimizer": "sgd", "lr": 0.01}),
    ({"train": {"lr": 0.1, "momentum": 0.9}}, "resnet20", {"optimizer": "sgd", "lr": 0.05}),  # before v2
    ({}, "resnet20", {"optimizer": "sgd", "lr": 0.05}),
    ({}, "pkg.mod:net", {"optimizer": "adamw", "lr": 3e-4}),
    ({"train": {"optimizer": "adamw"}}, "resnet20", {"optimizer": "adamw", "lr": 3e-4}),
])
def test_finetune_recipe(metadata, arch, expected):
    got = finetune_recipe(metadata, arch)
    assert got["optimizer"] == expected["optimizer"] and got["lr"] == pytest.approx(expected["lr"])


def _layernorm_net() -> nn.Module:
    """GroupNorm(1) (LayerNorm over channels) and GELU, as in ConvNeXt-style user models."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(1, 16), nn.GELU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(1, 32), nn.GELU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(32 * 49, 10))


def test_adamw_model_keeps_its_accuracy_when_finetuned_with_its_recipe(mnist_train, mnist_test):
    """The failure users saw: SGD at 0.05 wrecks an AdamW-trained net; its recipe does not."""
    torch.manual_seed(0)
    model = _layernorm_net()
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="adamw", progress=False)
    train(model, mnist_train.subset(2000), cfg)
    trained = evaluate(model, mnist_test)["top1"]
    assert trained > 70
    recipe = finetune_recipe({"train": cfg.to_dict()})
    assert recipe == {"optimizer": "adamw", "lr": pytest.approx(1e-3)}  # the training lr, rewound
    after = {}
    for name, kwargs in (("recipe", recipe), ("fixed sgd", {"optimizer": "sgd", "lr": 0.05})):
        tuned = copy.deepcopy(model)
        finetune(tuned, mnist_train.subset(1000), 1, progress=False, **kwargs)
        after[name] = evaluate(tuned, mnist_test)["top1"]
    assert after["recipe"] >= trained - 3
    assert after["fixed sgd"] < trained - 30
