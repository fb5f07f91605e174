"""Training raises accuracy, is reproducible with a seed, and rejects mismatched data."""
import pytest
import torch

from edgeprune.errors import BadInputError
from edgeprune.models import create_model
from edgeprune.train import TrainConfig, evaluate, random_shift, train


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
