"""package.module:factory models: the input shape they take, and weights that do or do not fit."""
import pytest
import torch
from torch import nn

from edgeprune.errors import BadInputError
from edgeprune.models import create_model, infer_input_shape, load_model, save_checkpoint
from edgeprune.models._checkpoint import first_mismatch

RGB = "tests.cli.custom_models:rgb_net"


def test_input_shape_comes_from_the_first_conv_and_the_data():
    model = create_model("resnet20", in_channels=3)
    assert infer_input_shape(model) == (3, 28, 28)
    assert infer_input_shape(model, data_shape=(1, 32, 32)) == (3, 32, 32)
    model.input_shape = (3, 40, 40)
    assert infer_input_shape(model) == (3, 40, 40)
    assert infer_input_shape(model, data_shape=(3, 24, 24)) == (3, 24, 24)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    assert infer_input_shape(mlp) == (1, 28, 28)


def test_a_3_channel_factory_loads_at_its_shape():
    ckpt = load_model(RGB, data_shape=(3, 16, 16))
    assert ckpt.input_shape == (3, 16, 16)
    assert ckpt.model(ckpt.example_input(2)).shape == (2, 2)
    assert load_model(RGB, input_shape=(3, 8, 8)).input_shape == (3, 8, 8)
    assert load_model(RGB).input_shape == (3, 28, 28)


def test_weights_checkpoint_shape_wins_over_inference_but_not_over_the_user(tmp_path):
    model = load_model(RGB).model
    save_checkpoint(tmp_path / "m.pt", model, RGB, {}, {"input_shape": [3, 12, 12]})
    assert load_model(RGB, weights=tmp_path / "m.pt", data_shape=(1, 28, 28)).input_shape == (3, 12, 12)
    assert load_model(RGB, weights=tmp_path / "m.pt", input_shape=(3, 20, 20)).input_shape == (3, 20, 20)


def test_dataparallel_weights_load(tmp_path):
    model = load_model(RGB).model
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "dp.pt")
    loaded = load_model(RGB, weights=tmp_path / "dp.pt").model
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("content, message", [
    (None, "weights file not found"),
    (b"", "empty or cut short"),
    (b"\x00garbage", "not a PyTorch file"),
    ("whole", "pickled .*TinyRGB"),
    ("list", "not a state_dict"),
])
def test_unreadable_weights_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if content == "whole":
        torch.save(load_model(RGB).model, path)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInputError, match=message) as info:
        load_model(RGB, weights=path)
    assert "\n" not in str(info.value)


def test_first_mismatch_names_the_tensor():
    expected = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}
    assert first_mismatch(expected, dict(expected)) is None
    assert "a.weight [2, 3] is missing" in first_mismatch(expected, {"b.bias": torch.zeros(4)})
    shape = first_mismatch(expected, {"a.weight": torch.zeros(3, 3), "b.bias": torch.zeros(4)})
    assert shape == "tensor a.weight is [3, 3] in the file but [2, 3] in the model"
    extra = first_mismatch(expected, {**expected, "c.weight": torch.zeros(1)})
    assert "c.weight" in extra and "lacks" in extra


def test_factories_that_fail_are_bad_input():
    with pytest.raises(BadInputError, match="called with no arguments"):
        load_model("tests.cli.custom_models:needs_arguments")
    with pytest.raises(BadInputError, match="cannot load model factory .*ModuleNotFoundError"):
        load_model("no_such_package.models:net")
