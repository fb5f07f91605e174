"""Each importance criterion ranks a planted dead filter last; specs and rounding behave."""
import pytest
import torch

from edgeprune.errors import BadInputError
from edgeprune.models import create_model
from edgeprune.pruning import (
    PruneConfig, channel_spec, list_importances, prune, round_channels, score_channels,
)

LAYER, BN, DEAD = "layers.0.1.conv1", "layers.0.1.bn1", 5
EXAMPLE = torch.zeros(1, 1, 28, 28)


def model_with_dead_filter():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(0.0, 0.2)
    modules = dict(model.named_modules())
    modules[LAYER].weight.data[DEAD] = 0.0
    modules[BN].weight.data[DEAD] = 0.0
    modules[BN].bias.data[DEAD] = 0.0
    return model


def test_registry_has_the_criteria():
    assert {"l1", "l2", "bn_scale", "taylor", "activation"} <= set(list_importances())


@pytest.mark.parametrize("name", ["l1", "l2", "bn_scale", "taylor", "activation"])
def test_dead_filter_ranks_last(name, mnist_test):
    model = model_with_dead_filter()
    calib = list(mnist_test.subset(64).loader(32))
    scores = score_channels(model, LAYER, name, EXAMPLE, calib)
    assert scores.shape == (16,)
    assert int(scores.argmin()) == DEAD
    assert scores[DEAD] < scores[[i for i in range(16) if i != DEAD]].min()


@pytest.mark.parametrize("name", ["l1", "activation"])
def test_pruning_removes_the_dead_filter(name, mnist_test):
    model = model_with_dead_filter()
    keep = model_with_dead_filter()
    calib = list(mnist_test.subset(64).loader(32))
    prune(model, PruneConfig(spec={LAYER: 15}, importance=name), EXAMPLE, calib)
    kept = dict(model.named_modules())[LAYER].weight
    original = dict(keep.named_modules())[LAYER].weight
    assert kept.shape[0] == 15
    # the surviving filters are exactly the live ones, in order
    assert torch.equal(kept, torch.cat([original[:DEAD], original[DEAD + 1:]]))


def test_data_criteria_need_data():
    with pytest.raises(BadInputError, match="needs calibration data"):
        prune(create_model("resnet20"), PruneConfig(ratio=0.5, importance="activation"), EXAMPLE)


def test_round_to_gives_simd_friendly_channels():
    model = create_model("mobilenet_v2")
    prune(model, PruneConfig(ratio=0.37, round_to=8), EXAMPLE)
    assert all(c % 8 == 0 or c < 8 for c in channel_spec(model).values())
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_round_channels():
    assert round_channels(10.0, 8, 64) == 8
    assert round_channels(13.0, 8, 64) == 16
    assert round_channels(0.2, 8, 64) == 8
    assert round_channels(3.0, 8, 6) == 3


def test_spec_pruning_and_inconsistent_specs():
    model = create_model("resnet20")
    prune(model, PruneConfig(spec={"layers.0.0.conv1": 4, "stem.0": 8}), EXAMPLE)
    spec = channel_spec(model)
    assert spec["layers.0.0.conv1"] == 4 and spec["stem.0"] == 8
    # stem.0 is coupled with the stage-1 residual adds: those follow it
    assert spec["layers.0.0.conv2"] == 8
    with pytest.raises(BadInputError, match="inconsistent"):
        prune(create_model("resnet20"), PruneConfig(spec={"stem.0": 8, "layers.0.0.conv2": 12}), EXAMPLE)
    with pytest.raises(BadInputError, match="not prunable"):
        prune(create_model("resnet20"), PruneConfig(spec={"fc": 3}), EXAMPLE)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"), ({"ratio": 1.0}, r"\[0, 1\)"), ({"ratio": 0.5, "round_to": 0}, "round_to"),
    ({"ratio": 0.5, "importance": "magic"}, "unknown importance"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        PruneConfig(**kwargs)
