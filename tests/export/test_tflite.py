"""TFLite export: every zoo model in fp32 and int8 (slow matrix), fp16 and dynamic, int8 io,
NHWC layout, selective quantization, size, and no network access during export."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.export import (ExportConfig, artifact_precision, export, export_many, float_layers, load_runner,
                              node_precisions, verify)
from tests.export.conftest import CALIB, VARIANTS, block_network, variant_id

pytest.importorskip("onnx2tf")
SAMPLES = 200
MIN_SQNR_DB = {"fp32": 50.0, "int8": 15.0}


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_zoo_tflite_exports_and_verifies(zoo, artifacts, mnist_test, variant, precision, no_network):
    out = artifacts.get(variant, "tflite")[precision]
    # int8 keeps the first and the last weighted layer in float by default (float_sensitive)
    assert artifact_precision(out) == {"fp32": "fp32", "int8": "mixed"}[precision]
    if precision == "int8":
        kinds = list(node_precisions(out).values())
        assert kinds[0] == kinds[-1] == "fp32" and kinds.count("fp32") == 2, kinds
    result = verify(out, zoo.get(*variant), mnist_test, samples=SAMPLES)
    assert result.passed, result.to_dict()
    # SQNR too: a fixture that barely beats chance agrees on top-1 even when logits are off
    assert result.sqnr_db > MIN_SQNR_DB[precision], result.to_dict()


@pytest.fixture(scope="module")
def resnet20(zoo, mnist_test, tmp_path_factory):
    """resnet20 in the other TFLite flavours, from one onnx2tf conversion, made offline."""
    ckpt = zoo.get("resnet20")
    d = tmp_path_factory.mktemp("tflite")
    cfgs = {
        "fp16": ExportConfig(format="tflite", precision="fp16"),
        "dynamic": ExportConfig(format="tflite", precision="dynamic"),
        "float_io": ExportConfig(format="tflite", precision="int8", int8_io=False, calibration_samples=CALIB,
                                 float_sensitive=False),
        "mixed": ExportConfig(format="tflite", precision="int8", calibration_samples=CALIB,
                              node_precision={"fc": "fp32"}, float_sensitive=False),
        "full_int8": ExportConfig(format="tflite", precision="int8", calibration_samples=CALIB,
                                  float_sensitive=False),
    }
    with pytest.MonkeyPatch.context() as mp:
        block_network(mp)
        paths = export_many(ckpt, {d / f"{k}.tflite": cfg for k, cfg in cfgs.items()}, data=mnist_test)
    return ckpt, dict(zip(cfgs, paths))


def test_int8_io_is_quantized_and_layout_is_nhwc(zoo, resnet20, mnist_test):
    """Full-integer int8 (float_sensitive=False): int8 io, every op int8, for integer-only NPUs."""
    from ai_edge_litert.interpreter import Interpreter

    out = resnet20[1]["full_int8"]
    it = Interpreter(model_path=str(out))
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8
    assert inp["quantization"][0] > 0
    assert list(inp["shape"]) == [1, 28, 28, 1]
    assert set(node_precisions(out).values()) == {"int8"} and float_layers(out) == []
    logits = load_runner(out).run(mnist_test.x[:4].numpy())
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    reference = zoo.get("resnet20").model(mnist_test.x[:4]).detach().numpy()
    assert (logits.argmax(1) == reference.argmax(1)).all()


@pytest.mark.parametrize("precision", ["fp16", "dynamic"])
def test_fp16_and_dynamic(resnet20, mnist_test, precision):
    ckpt, paths = resnet20
    assert artifact_precision(paths[precision]) == precision
    result = verify(paths[precision], ckpt, mnist_test, samples=SAMPLES)
    assert result.passed, result.to_dict()


def test_float_io_int8(resnet20, mnist_test):
    ckpt, paths = resnet20
    assert load_runner(paths["float_io"])._in["dtype"] == np.float32
    assert artifact_precision(paths["float_io"]) == "int8"
    assert verify(paths["float_io"], ckpt, mnist_test, samples=SAMPLES).passed


def test_selective_quantization_keeps_named_modules_in_float(resnet20, mnist_test):
    ckpt, paths = resnet20
    kinds = list(node_precisions(paths["mixed"]).values())
    assert kinds.count("fp32") == 1 and "int8" in kinds
    assert artifact_precision(paths["mixed"]) == "mixed"
    result = verify(paths["mixed"], ckpt, mnist_test, samples=SAMPLES)
    assert result.passed, result.to_dict()


def test_int8_is_at_most_35_percent_of_fp32(artifacts):
    paths = artifacts.get(("resnet20", True), "tflite")
    assert paths["int8"].stat().st_size <= 0.35 * paths["fp32"].stat().st_size


def test_rgb_model_exports_offline(tmp_path, no_network):
    """3-channel inputs are where onnx2tf would fetch sample images from the internet."""
    from edgeprune.models import create_model

    model = create_model("resnet20", in_channels=3, input_size=32).eval()
    x = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    cfg = ExportConfig(format="tflite", precision="int8", input_shape=(3, 32, 32), calibration_samples=16)
    out = export(model, cfg, tmp_path / "rgb.tflite", data=x)
    assert load_runner(out).run(x[:2]).shape == (2, 10)
