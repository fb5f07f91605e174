"""CLI smoke tests for models/train/analyze/prune and their bad-input errors."""
import json

import pytest

from edgeprune.models import list_models


def test_models_json_lists_the_zoo(cli):
    out = cli("models", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)["models"]
    assert {m["name"] for m in listed} == set(list_models())
    assert all(m["family"] for m in listed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import run_cli
    path = tmp_path_factory.mktemp("cli") / "r20.pt"
    out = run_cli("train", "--arch", "resnet20", "--width", "8", "--data", "mnist", "--epochs", "2",
                  "--train-samples", "2000", "--batch-size", "32", "--out", str(path), "--json")
    assert out.returncode == 0, out.stderr
    return path, json.loads(out.stdout)


def test_train_prune_analyze(trained, cli, tmp_path):
    path, result = trained
    assert result["accuracy"] > 30.0  # two short epochs on 2,000 digits: well above chance
    pruned = tmp_path / "p.pt"
    out = cli("prune", str(path), "--ratio", "0.5", "--out", str(pruned))
    assert out.returncode == 0, out.stderr
    assert "test top-1" in out.stdout
    before = json.loads(cli("analyze", str(path), "--json").stdout)
    after = json.loads(cli("analyze", str(pruned), "--json").stdout)
    assert after["params"] <= 0.35 * before["params"]
    assert after["macs"] < before["macs"]
    assert set(after["model_bytes"]) == {"fp32", "fp16", "int8"}
    assert after["layers"][0].keys() >= {"name", "type", "in_channels", "out_channels", "params", "macs"}


def test_prune_with_spec_and_activation_importance(trained, cli, tmp_path):
    path, _ = trained
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"channels": {"layers.0.0.conv1": 8}}))
    out = cli("prune", str(path), "--spec", str(spec), "--importance", "activation",
              "--finetune-epochs", "0", "--out", str(tmp_path / "s.pt"), "--json")  # layout only
    assert out.returncode == 0, out.stderr
    layers = json.loads(cli("analyze", str(tmp_path / "s.pt"), "--json").stdout)["layers"]
    assert next(l for l in layers if l["name"] == "layers.0.0.conv1")["out_channels"] == 8


@pytest.mark.parametrize("args, message", [
    (["analyze", "missing.pt"], "model file not found"),
    (["train", "--arch", "resnet99", "--out", "x.pt"], "unknown model"),
    (["train", "--arch", "resnet20", "--data", "nowhere.npz", "--out", "x.pt"], "not found"),
    (["prune", "corrupt.pt", "--ratio", "0.5", "--out", "x.pt"], "cannot read"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, message):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_bad_ratio_and_wrong_shape_data(trained, cli, tmp_path):
    import numpy as np
    path, _ = trained
    out = cli("prune", str(path), "--ratio", "1.5", "--out", str(tmp_path / "x.pt"))
    assert out.returncode == 2 and "[0, 1)" in out.stderr
    np.savez(tmp_path / "wide.npz", x=np.zeros((20, 5, 6, 6), dtype=np.uint8), y=np.arange(20) % 2)
    out = cli("prune", str(path), "--ratio", "0.5", "--data", str(tmp_path / "wide.npz"),
              "--out", str(tmp_path / "x.pt"))
    assert out.returncode == 2 and "channels" in out.stderr
    assert not (tmp_path / "x.pt").exists()
