"""TFLite export: every zoo model in fp32 and int8 (slow matrix), fp16 and dynamic, int8 io,
NHWC layout, selective quantization, size, and no network access during export."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.export import ExportConfig, artifact_precision, export, load_runner, node_precisions, verify
from tests.export.conftest import VARIANTS, variant_id

pytest.importorskip("onnx2tf")
CALIB = 32
SAMPLES = 200


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_zoo_tflite_exports_and_verifies(zoo, mnist_test, export_dir, variant, precision, no_network):
    ckpt = zoo.get(*variant)
    out = export_dir / f"{variant_id(variant)}-{precision}.tflite"
    export(ckpt, ExportConfig(format="tflite", precision=precision, calibration_samples=CALIB), out,
           data=mnist_test)
    assert artifact_precision(out) == precision
    result = verify(out, ckpt, mnist_test, samples=SAMPLES)
    assert result.passed, result.to_dict()


def test_int8_io_is_quantized_and_layout_is_nhwc(zoo, mnist_test, tmp_path, no_network):
    from ai_edge_litert.interpreter import Interpreter

    ckpt = zoo.get("resnet20")
    out = export(ckpt, ExportConfig(format="tflite", precision="int8", calibration_samples=CALIB),
                 tmp_path / "m.tflite", data=mnist_test)
    it = Interpreter(model_path=str(out))
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8
    assert inp["quantization"][0] > 0
    assert list(inp["shape"]) == [1, 28, 28, 1]
    assert set(node_precisions(out).values()) == {"int8"}
    logits = load_runner(out).run(mnist_test.x[:4].numpy())
    assert logits.shape == (4, 10) and logits.dtype == np.float32


@pytest.mark.parametrize("precision", ["fp16", "dynamic"])
def test_fp16_and_dynamic(zoo, mnist_test, tmp_path, precision):
    ckpt = zoo.get("resnet20")
    out = export(ckpt, ExportConfig(format="tflite", precision=precision), tmp_path / "m.tflite")
    assert artifact_precision(out) == precision
    assert verify(out, ckpt, mnist_test, samples=SAMPLES).passed


def test_float_io_int8(zoo, mnist_test, tmp_path):
    ckpt = zoo.get("resnet20")
    cfg = ExportConfig(format="tflite", precision="int8", int8_io=False, calibration_samples=CALIB)
    out = export(ckpt, cfg, tmp_path / "m.tflite", data=mnist_test)
    assert load_runner(out)._in["dtype"] == np.float32
    assert artifact_precision(out) == "int8"
    assert verify(out, ckpt, mnist_test, samples=SAMPLES).passed


def test_selective_quantization_keeps_named_modules_in_float(zoo, mnist_test, tmp_path):
    ckpt = zoo.get("resnet20")
    cfg = ExportConfig(format="tflite", precision="int8", calibration_samples=CALIB,
                       node_precision={"fc": "fp32"})
    out = export(ckpt, cfg, tmp_path / "mixed.tflite", data=mnist_test)
    kinds = list(node_precisions(out).values())
    assert kinds.count("fp32") == 1 and "int8" in kinds
    assert artifact_precision(out) == "mixed"
    assert verify(out, ckpt, mnist_test, samples=SAMPLES).passed


def test_int8_is_at_most_35_percent_of_fp32(zoo, mnist_test, tmp_path):
    ckpt = zoo.get("resnet20", pruned=True)
    fp32 = export(ckpt, ExportConfig(format="tflite"), tmp_path / "fp32.tflite")
    int8 = export(ckpt, ExportConfig(format="tflite", precision="int8", calibration_samples=CALIB),
                  tmp_path / "int8.tflite", data=mnist_test)
    assert int8.stat().st_size <= 0.35 * fp32.stat().st_size


def test_rgb_model_exports_offline(tmp_path, no_network):
    """3-channel inputs are where onnx2tf would fetch sample images from the internet."""
    from edgeprune.models import create_model

    model = create_model("resnet20", in_channels=3, input_size=32).eval()
    x = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    cfg = ExportConfig(format="tflite", precision="int8", input_shape=(3, 32, 32), calibration_samples=16)
    out = export(model, cfg, tmp_path / "rgb.tflite", data=x)
    assert load_runner(out).run(x[:2]).shape == (2, 10)
