"""Peak-memory estimate: liveness and weights read from hand-built ONNX graphs, the fit, and
one check against memory measured on the local agent."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.errors import BadInputError
from edgeprune.targets.lut.memory import (
    MemoryBreakdown, PeakMemoryModel, check_peak_memory, onnx_memory,
)


def _save(tmp_path: Path, name: str, nodes, inputs, outputs, initializers=(), domains=()) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", 13)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 7
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _f32(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _branchy(tmp_path: Path, a_is_output: bool) -> Path:
    """x[1,100] -> a = Relu(x) -> b = Concat(a, a)[1,200] -> c = ReduceSum(b)[1,1] -> y = x + c.
    x (400 B) lives to the Add; a (400 B) to the Concat; b (800 B) to the ReduceSum."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Concat", ["a", "a"], ["b"], axis=1, name="concat"),
             helper.make_node("ReduceSum", ["b"], ["c"], keepdims=1, name="reduce"),
             helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    outputs = [_f32("y", [1, 100])] + ([_f32("a", [1, 100])] if a_is_output else [])
    return _save(tmp_path, f"branchy_{a_is_output}", nodes, [_f32("x", [1, 100])], outputs)


def test_peak_is_the_largest_live_set_in_node_order(tmp_path):
    m = onnx_memory(_branchy(tmp_path, a_is_output=False))
    assert m.activations_bytes == 400 + 400 + 800  # x, a and b at the Concat; a dies there
    assert m.largest_step == "concat"
    assert m.weights_bytes == 0 and m.unknown_tensors == 0


def test_graph_outputs_stay_live_to_the_end(tmp_path):
    m = onnx_memory(_branchy(tmp_path, a_is_output=True))
    assert m.activations_bytes == 400 + 400 + 800 + 4  # a is kept, so c joins x, a, b
    assert m.largest_step == "reduce"


def test_dtype_sizes_and_symbolic_batch_read_as_one(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE, name="cast")]
    path = _save(tmp_path, "cast", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 5])],
                 [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 3, 5])])
    assert onnx_memory(path).activations_bytes == 15 * 2 + 15 * 8


def test_tensors_without_a_shape_are_counted_and_left_out(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Mystery", ["a"], ["b"], domain="com.example", name="mystery"),
             helper.make_node("Relu", ["b"], ["y"], name="relu2")]
    path = _save(tmp_path, "mystery", nodes, [_f32("x", [1, 10])], [_f32("y", [1, 10])], domains=["com.example"])
    m = onnx_memory(path)
    assert m.unknown_tensors == 1  # b: shape inference knows nothing of com.example ops
    assert m.activations_bytes == 80  # x and a at the first Relu; b is skipped, y is 40 B


def test_weights_are_initializers_and_constants_not_activations(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")  # 64 B
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "shape")  # 16 B
    bias = helper.make_tensor("bias_value", TensorProto.FLOAT, [4], [0.5] * 4)  # 16 B
    nodes = [helper.make_node("Constant", [], ["bias"], value=bias, name="const"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
             helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
             helper.make_node("Add", ["r", "bias"], ["y"], name="add")]
    path = _save(tmp_path, "weights", nodes, [_f32("x", [1, 4])], [_f32("y", [1, 4])], [w, shape])
    m = onnx_memory(path)
    assert m.weights_bytes == 64 + 16 + 16
    assert m.activations_bytes == 16 + 16  # x and h at the MatMul (equal to each later pair)


def test_a_file_that_is_not_onnx_is_bad_input(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07not a protobuf" * 10)
    with pytest.raises(BadInputError, match="not an ONNX model"):
        onnx_memory(path)
    with pytest.raises(BadInputError, match="cannot read"):
        onnx_memory(tmp_path / "missing.onnx")


def _points(baseline: float, w_factor: float, a_factor: float) -> list[tuple[MemoryBreakdown, float]]:
    mb = 1024 * 1024
    shapes = [(1.0, 4.0), (6.0, 1.0), (3.0, 3.0), (0.5, 8.0), (8.0, 0.5)]
    return [(MemoryBreakdown(int(w * mb), int(a * mb), "n"), baseline + w_factor * w + a_factor * a)
            for w, a in shapes]


def test_fit_recovers_the_factors_with_a_measured_baseline():
    model = PeakMemoryModel.fit(_points(12.0, 1.6, 2.4), baseline_mb=12.0)
    assert model.baseline_mb == 12.0 and model.fitted_points == 5
    assert model.weights_factor == pytest.approx(1.6) and model.activations_factor == pytest.approx(2.4)


def test_fit_finds_the_baseline_as_an_intercept_without_one():
    model = PeakMemoryModel.fit(_points(12.0, 1.6, 2.4))
    assert model.baseline_mb == pytest.approx(12.0)
    assert model.weights_factor == pytest.approx(1.6) and model.activations_factor == pytest.approx(2.4)


def test_fit_keeps_each_factor_at_least_one():
    model = PeakMemoryModel.fit(_points(12.0, 0.3, 2.0), baseline_mb=12.0)
    assert model.weights_factor == 1.0  # below one copy of the weights is not physical
    assert model.activations_factor > 1.0


def test_fit_with_too_few_points_keeps_the_default_factors():
    points = _points(12.0, 1.6, 2.4)[:2]
    model = PeakMemoryModel.fit(points, baseline_mb=12.0)
    assert (model.weights_factor, model.activations_factor, model.fitted_points) == (1.0, 1.0, 2)
    assert PeakMemoryModel.fit([], baseline_mb=9.5).baseline_mb == 9.5
    with pytest.raises(BadInputError, match="needs points"):
        PeakMemoryModel.fit([])


def test_model_round_trips_through_json_and_validates():
    model = PeakMemoryModel(baseline_mb=12.7, weights_factor=1.6, activations_factor=3.0, fitted_points=6)
    again = PeakMemoryModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    assert again.estimate_mb(MemoryBreakdown(1024 * 1024, 2 * 1024 * 1024, "n")) == pytest.approx(12.7 + 1.6 + 6.0)
    with pytest.raises(BadInputError, match="unknown PeakMemoryModel keys: extra"):
        PeakMemoryModel.from_dict({**model.to_dict(), "extra": 1})
    with pytest.raises(BadInputError, match="activations_factor"):
        PeakMemoryModel(activations_factor=-1.0)
    with pytest.raises(BadInputError, match="version"):
        PeakMemoryModel(version=99)


def _conv_net(path: Path, c_in: int, c_out: int, size: int) -> Path:
    """Conv 3x3 -> Relu -> Conv 1x1 -> GlobalAveragePool, random weights."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((c_out, c_out, 1, 1)).astype(np.float32) * 0.01, "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["h2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["h2"], ["y"], name="pool")]
    return _save(path.parent, path.stem, nodes, [_f32("x", [1, c_in, size, size])], [_f32("y", [1, c_out, 1, 1])],
                 [w1, w2])


def test_estimate_is_within_20_percent_of_memory_measured_on_the_local_agent(local_target, tmp_path):
    # three nets to fit on (activations-heavy, weights-heavy, mixed), then one checked
    shapes = [(8, 64, 96), (64, 384, 8), (16, 128, 64), (32, 96, 80)]
    paths = [_conv_net(tmp_path / f"net{i}.onnx", *s) for i, s in enumerate(shapes)]
    result = check_peak_memory(local_target, paths, fit_count=3, runs=5, min_seconds=0.1, warmup_seconds=0.05)
    checked = result["models"][-1]
    assert [m["fitted"] for m in result["models"]] == [True, True, True, False]
    assert result["checked"] == 1 and checked["activations_mb"] > 4.0  # activations are most of it
    assert abs(checked["rel_error"]) <= 0.20, checked
    assert result["within_tolerance"] == 1.0 and result["max_error"] == pytest.approx(abs(checked["rel_error"]))
    model = PeakMemoryModel.from_dict(result["model"])
    assert 5.0 < model.baseline_mb < 100.0 and model.fitted_points == 3
    assert checked["estimate_mb"] > model.baseline_mb + checked["activations_mb"]  # more than one copy held
