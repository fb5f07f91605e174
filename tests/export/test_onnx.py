"""ONNX export of every zoo model (unpruned and 50% pruned) in fp32 and int8, plus fp16,
dynamic and per-node overrides; precision is read from the artifact, never assumed."""
from __future__ import annotations

import onnx
import pytest

from edgeprune.export import ExportConfig, artifact_precision, export, float_layers, node_precisions, verify
from edgeprune.export.onnx import module_of
from tests.export.conftest import CALIB, VARIANTS, variant_id

SAMPLES = 200
MIN_SQNR_DB = {"fp32": 50.0, "int8": 15.0}


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_zoo_onnx_exports_and_verifies(zoo, artifacts, mnist_test, variant, precision):
    out = artifacts.get(variant, "onnx")[precision]
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 28, 28]
    if precision == "int8":
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        # the first and the last weighted layer stay in float by default (float_sensitive)
        weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
        assert float_layers(out) == [weighted[0], weighted[-1]]
        assert artifact_precision(out) == "mixed"
    else:
        assert artifact_precision(out) == precision and float_layers(out) == []
    result = verify(out, zoo.get(*variant), mnist_test, samples=SAMPLES)
    assert result.passed, result.to_dict()
    # SQNR too: a fixture that barely beats chance agrees on top-1 even when logits are off
    assert result.sqnr_db > MIN_SQNR_DB[precision], result.to_dict()


@pytest.mark.parametrize("precision, min_sqnr", [("fp16", 40.0), ("dynamic", 15.0)])
def test_fp16_and_dynamic(zoo, mnist_test, tmp_path, precision, min_sqnr):
    ckpt = zoo.get("resnet20")
    out = export(ckpt, ExportConfig(precision=precision), tmp_path / "m.onnx")
    assert artifact_precision(out) == precision
    result = verify(out, ckpt, mnist_test, samples=SAMPLES)
    assert result.passed and result.sqnr_db > min_sqnr, result.to_dict()


def test_node_override_keeps_named_modules_in_float(zoo, mnist_test, tmp_path):
    ckpt = zoo.get("resnet20")
    cfg = ExportConfig(precision="int8", calibration_samples=CALIB, min_agreement=0.0,
                       node_precision={"stem.0": "fp32", "fc": "fp32"})
    out = export(ckpt, cfg, tmp_path / "mixed.onnx", data=mnist_test)
    per_node = {module_of(k): v for k, v in node_precisions(out).items()}
    assert per_node["stem.0"] == "fp32" and per_node["fc"] == "fp32"
    assert per_node["layers.0.0.conv1"] == "int8"
    assert artifact_precision(out) == "mixed"
    assert verify(out, ckpt, mnist_test, samples=SAMPLES).passed


def test_int8_is_at_most_35_percent_of_fp32(artifacts):
    paths = artifacts.get(("resnet20", True), "onnx")
    assert paths["int8"].stat().st_size <= 0.35 * paths["fp32"].stat().st_size


@pytest.mark.parametrize("name, module", [
    ("/features/features.1/block/block.0/block.0.0/Conv", "features.1.block.0.0"),
    ("/layers/layers.0/layers.0.0/conv1/Conv", "layers.0.0.conv1"),
    ("/fc/Gemm", "fc"),
    ("Conv_3", None),
])
def test_module_of(name, module):
    assert module_of(name) == module


@pytest.mark.parametrize("pool, size", [
    (dict(kernel_size=3, stride=2, ceil_mode=True), 28),   # squeezenet
    (dict(kernel_size=3, stride=2, padding=1), 28),        # resnet18 stem
    (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), 14),
    (dict(kernel_size=2), 7),
])
def test_edge_padded_maxpools_keep_outputs(tmp_path, pool, size):
    """MaxPool padding made explicit for onnx2tf (edge copies, no float-minimum pad) is exact."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from edgeprune.export.onnx import edge_padded_maxpools, torch_to_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.MaxPool2d(**pool)).eval()
    torch_to_onnx(model, (1, size, size), tmp_path / "m.onnx")
    padded = edge_padded_maxpools(onnx.load(str(tmp_path / "m.onnx")))
    onnx.checker.check_model(padded)
    pool_attrs = [onnx.helper.get_attribute_value(a) for n in padded.graph.node if n.op_type == "MaxPool"
                  for a in n.attribute if a.name in ("pads", "ceil_mode")]
    assert not any(any(v) if isinstance(v, list) else v for v in pool_attrs)
    x = np.random.default_rng(0).standard_normal((1, 1, size, size)).astype(np.float32)
    got = ort.InferenceSession(padded.SerializeToString()).run(None, {"input": x})[0]
    # exact against the unrewritten graph (same conv kernels); torch's conv may differ by an ulp
    original = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, original)
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), rtol=0, atol=1e-6)
