"""A user's own package.module:factory is first-class: train it at its data's shape (3 x 16
x 16 here), record the recipe and shape, analyze it; bad weights are one clear line."""
import json

import pytest
import torch

from tests.cli.conftest import FACTORY, assert_one_error_line, one_json_object, run_module


@pytest.fixture(scope="module")
def trained_factory(rgb_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("factory") / "rgb.pt"
    res = run_module("train", "--arch", f"{FACTORY}:rgb_net", "--data", rgb_npz, "--epochs", "5",
                     "--batch-size", "16", "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    return out, one_json_object(res.stdout)


def test_train_a_3_channel_factory_records_shape_and_recipe(trained_factory):
    path, result = trained_factory
    assert result["optimizer"] == "adamw" and result["lr"] == 1e-3
    assert result["accuracy"] > 90  # red or not: an easy task for five short epochs
    meta = torch.load(path, weights_only=True)["metadata"]
    assert meta["input_shape"] == [3, 16, 16]
    assert meta["train"]["optimizer"] == "adamw" and meta["train"]["weight_decay"] == 0.05


def test_checkpoint_and_factory_analyze_at_the_right_shape(trained_factory, rgb_npz, tmp_path):
    path, _ = trained_factory
    named = run_module("analyze", f"{FACTORY}:rgb_net", "--weights", path, "--json")
    assert one_json_object(named.stdout)["input_shape"] == [3, 16, 16], named.stderr
    from_data = run_module("analyze", f"{FACTORY}:rgb_net", "--data", rgb_npz, "--json")
    assert one_json_object(from_data.stdout)["input_shape"] == [3, 16, 16], from_data.stderr
    asked = run_module("analyze", f"{FACTORY}:rgb_net", "--weights", path, "--input-shape", "3,24,24", "--json")
    assert one_json_object(asked.stdout)["input_shape"] == [3, 24, 24], asked.stderr


def test_weights_that_do_not_fit_name_the_first_tensor(trained_factory, tmp_path):
    path, _ = trained_factory
    res = run_module("analyze", f"{FACTORY}:rgb_net_3_classes", "--weights", path)
    assert res.returncode == 2
    assert_one_error_line(res.stderr, "head.2.weight", "[2, 16] in the file but [3, 16] in the model")
    missing = run_module("analyze", f"{FACTORY}:rgb_net", "--weights", tmp_path / "nope.pt", "--json")
    assert missing.returncode == 2
    assert "weights file not found" in one_json_object(missing.stdout)["error"]["message"]


def test_sgd_can_be_asked_for_and_bad_shapes_are_usage_errors(rgb_npz, tmp_path):
    res = run_module("train", "--arch", "resnet20", "--width", "4", "--data", rgb_npz, "--epochs", "1",
                     "--optimizer", "sgd", "--lr", "0.05", "--input-shape", "1,20,20",
                     "--out", tmp_path / "z.pt", "--json")
    assert res.returncode == 0, res.stderr
    assert one_json_object(res.stdout)["optimizer"] == "sgd"
    meta = torch.load(tmp_path / "z.pt", weights_only=True)["metadata"]
    assert meta["input_shape"] == [1, 20, 20] and meta["train"]["lr"] == 0.05
    bad = run_module("analyze", "x.pt", "--input-shape", "3,32")
    assert bad.returncode == 2
    assert_one_error_line(bad.stderr, "not C,H,W")


def test_a_checkpoint_never_names_code_to_run(trained_factory, tmp_path):
    """A data-only checkpoint (it passes weights_only=True) whose arch is module:callable is
    refused, for every verb, and the callable is never called: the user names the factory."""
    path, _ = trained_factory
    payload = torch.load(path, weights_only=True)
    marker = tmp_path / "ran"
    payload["arch"] = f"{FACTORY}:records_call"  # writes the marker file if it is ever called
    payload["arch_kwargs"] = {}
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    for verb in (["analyze", evil], ["prune", evil, "--ratio", "0.5", "--out", tmp_path / "p.pt"],
                 ["export", evil, "--out", tmp_path / "e.onnx"]):
        res = run_module(*verb, "--json", env={"EDGEPRUNE_TEST_MARKER": str(marker)})
        assert res.returncode == 2, (verb, res.stderr)
        error = one_json_object(res.stdout)["error"]["message"]
        assert "never imports code" in error and "--weights" in error
    assert not marker.exists() and not (tmp_path / "p.pt").exists() and not (tmp_path / "e.onnx").exists()
