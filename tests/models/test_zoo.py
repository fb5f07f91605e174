"""Every zoo model builds, runs, prunes at 30/50/70% and round-trips through a checkpoint."""
import pytest
import torch

from edgeprune.errors import BadInputError
from edgeprune.models import create_model, list_models, load_model, model_family, save_checkpoint
from edgeprune.pruning import PruneConfig, channel_spec, prune

ZOO = list_models()
EXPECTED = {"resnet20", "resnet32", "resnet56", "resnet18", "vgg11", "vgg16", "mobilenet_v1",
            "mobilenet_v2", "squeezenet1_1", "alexnet"}


def params(model):
    return sum(p.numel() for p in model.parameters())


def test_zoo_is_complete():
    assert EXPECTED <= set(ZOO)
    assert model_family("mobilenet_v2") == "mobilenet"
    assert list_models("resnet*") == ["resnet18", "resnet20", "resnet32", "resnet56"]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("shape", [(1, 28, 10), (3, 32, 7)])
def test_forward_shape(name, shape):
    c, size, classes = shape
    model = create_model(name, in_channels=c, num_classes=classes, input_size=size).eval()
    assert model(torch.randn(2, c, size, size)).shape == (2, classes)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_pruned_model_runs_and_shrinks(name, ratio):
    torch.manual_seed(0)
    model = create_model(name).eval()
    before = params(model)
    spec_before = channel_spec(model)
    prune(model, PruneConfig(ratio=ratio), torch.zeros(1, 1, 28, 28))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    fraction = params(model) / before
    # Both a layer's filters and its inputs shrink: about (1-r)^2, never above (1-r).
    assert (1 - ratio) ** 2 - 0.03 <= fraction <= (1 - ratio) + 0.02
    spec = channel_spec(model)
    for layer, channels in spec.items():
        assert channels == max(1, round(spec_before[layer] * (1 - ratio)))


@pytest.mark.parametrize("name", ZOO)
def test_checkpoint_round_trip_is_exact(name, tmp_path):
    torch.manual_seed(1)
    model = create_model(name).eval()
    prune(model, PruneConfig(ratio=0.5, round_to=4), torch.zeros(1, 1, 28, 28))
    for m in model.modules():  # non-trivial BN statistics, so a load that skipped them would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, name, {}, {"input_shape": [1, 28, 28], "accuracy": 12.5})
    loaded = load_model(path)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded.model(x), model(x))
    assert loaded.channel_spec == channel_spec(model)
    assert loaded.metadata["accuracy"] == 12.5


def test_checkpoint_holds_no_pickled_classes(tmp_path):
    model = create_model("resnet20")
    save_checkpoint(tmp_path / "m.pt", model, "resnet20", {}, {"input_shape": [1, 28, 28]})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # would refuse pickled classes
    assert set(payload) >= {"arch", "arch_kwargs", "channel_spec", "state_dict", "metadata"}


def test_unknown_model_is_a_clear_error():
    with pytest.raises(BadInputError, match="unknown model 'resnet99'"):
        create_model("resnet99")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInputError, match="cannot read .* as an edgeprune checkpoint"):
        load_model(bad)
    with pytest.raises(BadInputError, match="model file not found"):
        load_model(tmp_path / "missing.pt")


def test_factory_models_load_with_weights(tmp_path):
    model = create_model("resnet20").eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model("edgeprune.models.resnet:resnet20", weights=tmp_path / "w.pt")
    x = torch.randn(1, 1, 28, 28)
    assert torch.equal(loaded.model(x), model(x))
    with pytest.raises(BadInputError, match="cannot load model factory"):
        load_model("edgeprune.models.resnet:nope")
