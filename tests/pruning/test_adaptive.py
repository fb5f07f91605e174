"""Adaptive activation-based pruning: thresholds remove low-attention filters physically,
scale per layer, respect the per-iteration limits, and keep every zoo graph consistent."""
import pytest
import torch

from edgeprune.analysis import analyze
from edgeprune.errors import BadInputError
from edgeprune.models import create_model
from edgeprune.pruning.adaptive import AdaptiveConfig, plan_threshold, prune_by_threshold
from edgeprune.pruning import channel_spec, is_depthwise, prune_to_spec
from tests.conformance.families import FAMILIES

EXAMPLE = torch.zeros(1, 1, 28, 28)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """These nets are tiny: one thread (tests/conftest.py: one_thread)."""


@pytest.fixture(scope="module")
def calib(mnist_train_module):
    return list(mnist_train_module.subset(128).loader(64))


@pytest.fixture(scope="module")
def mnist_train_module():
    from edgeprune.data import load_dataset
    return load_dataset("mnist", "train")


def test_zero_threshold_removes_nothing(calib):
    torch.manual_seed(0)  # unseeded, an init whose ReLU never fires has attention 0 <= T
    model = create_model("resnet20")
    before = channel_spec(model)
    assert prune_by_threshold(model, 0.0, EXAMPLE, calib, AdaptiveConfig()) == 0
    assert channel_spec(model) == before


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "squeezenet1_1", "vgg11", "alexnet"])
def test_higher_threshold_prunes_more_and_graph_stays_valid(name, calib):
    torch.manual_seed(0)
    sizes = []
    for threshold in (0.3, 0.8):
        model = create_model(name)
        prune_by_threshold(model, threshold, EXAMPLE, calib, AdaptiveConfig())
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes[1] < sizes[0]


def test_dead_filters_go_first(calib):
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    conv, bn = model.layers[0][1].conv1, model.layers[0][1].bn1
    for i in (3, 9):
        conv.weight.data[i] = 0
        bn.weight.data[i] = 0
        bn.bias.data[i] = 0
    _, plans = plan_threshold(model, 0.05, EXAMPLE, calib, AdaptiveConfig())
    plan = next(p for p in plans if p.layer == "layers.0.1.conv1")
    assert {3, 9} <= set(plan.drop)


def test_per_iteration_limit_and_min_channels(calib):
    model = create_model("resnet20")
    before = channel_spec(model)
    prune_by_threshold(model, 50.0, EXAMPLE, calib, AdaptiveConfig(max_layer_fraction=0.25, round_to=4))
    after = channel_spec(model)
    for layer, channels in after.items():
        assert channels >= 0.75 * before[layer] - 1e-9
        assert channels % 4 == 0


def test_mac_scaling_prunes_high_resolution_layers_harder(calib):
    """Latency follows MACs: stage-1 convs (28x28) hold a third of the MACs but few params."""
    stage1 = []
    for scale_by in ("params", "macs"):
        model = create_model("resnet20")
        torch.manual_seed(0)
        prune_by_threshold(model, 1.0, EXAMPLE, calib, AdaptiveConfig(scale_by=scale_by))
        stage1.append(channel_spec(model)["layers.0.0.conv1"])
    assert stage1[1] < stage1[0]


def test_bad_config():
    with pytest.raises(BadInputError, match="scale_by"):
        AdaptiveConfig(scale_by="flops")
    with pytest.raises(BadInputError, match="max_layer_fraction"):
        AdaptiveConfig(max_layer_fraction=1.0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_threshold_pruning_works_on_every_family(family):
    """Grouped convs lose whole positions, concat-tied channels go together, and the
    result rebuilds from its channel spec (what compress does between candidates)."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    x = torch.zeros(1, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    rgb_calib = [(torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen))]
    before = sum(p.numel() for p in model.parameters())
    notes = []
    for threshold in (0.8, 0.8):  # twice: the second round prunes a pruned model
        removed = prune_by_threshold(model, threshold, x, rgb_calib, AdaptiveConfig(round_to=2), notes=notes)
        assert removed > 0
    assert notes == []
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) < before
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and not is_depthwise(m):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name
    fresh = FAMILIES[family]().eval()
    prune_to_spec(fresh, channel_spec(model), x)
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_threshold_plans_drop_whole_groups_of_grouped_convs():
    model = FAMILIES["resnext"]().eval()
    gen = torch.Generator().manual_seed(0)
    rgb_calib = [(torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen))]
    _, plans = plan_threshold(model, 1.0, torch.zeros(1, 3, 32, 32), rgb_calib, AdaptiveConfig())
    plan = next(p for p in plans if p.layer == "blocks.2.conv1.0")  # feeds a groups=4 conv of 96
    assert plan.drop and len(plan.drop) % 4 == 0
    positions = {i % 24 for i in plan.drop}
    assert sorted(plan.drop) == sorted(p + 24 * g for p in positions for g in range(4))
