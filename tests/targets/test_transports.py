"""The same behaviour over every transport: local (reference), ssh to an emulated sshd, adb to the stand-in."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.targets import Measurement
from edgeprune.targets.cache import MeasurementCache

CONTRACT = {"target", "source", "emulated", "runtime", "threads", "runs", "latency_ms", "peak_memory_mb",
            "model_bytes", "load_ms", "unstable"}


def test_check_reports_runtimes(any_target):
    info = any_target.check()
    assert info["ok"] and info["reachable"]
    assert {"onnxruntime", "tflite"} <= set(info["runtimes"])
    assert info["emulated"] == any_target.emulated
    assert info["device"]["cores"] >= 1


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_measure_follows_protocol(any_target, artifacts, kind):
    m = any_target.measure(artifacts[kind], use_cache=False)
    assert isinstance(m, Measurement)
    assert CONTRACT <= set(m.to_dict())
    assert m.source == ("emulated" if any_target.emulated else "device") and m.emulated == any_target.emulated
    assert m.runtime["name"] == ("tflite" if kind == "tflite" else "onnxruntime") and m.runtime["version"]
    assert m.runs >= 10 and len(m.times_ms) == m.runs and m.threads == 1
    lat = m.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["cv"] >= 0
    assert m.peak_memory_mb is not None and m.peak_memory_mb > 0 and m.memory_method.endswith("baseline")
    assert m.model_bytes == artifacts[kind].stat().st_size and len(m.model_sha256) == 64
    assert m.load_ms > 0 and m.device["hostname"]


def test_infer_nchw_matches_host_onnx(any_target, artifacts):
    batch = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    out = any_target.infer(artifacts["onnx"], batch)
    sess = ort.InferenceSession(str(artifacts["onnx"]), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": batch[i:i + 1]})[0] for i in range(3)])
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_infer_transposes_nchw_for_nhwc_tflite(any_target, artifacts):
    from ai_edge_litert.interpreter import Interpreter
    batch = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
    out = any_target.infer(artifacts["tflite"], batch)
    interp = Interpreter(model_path=str(artifacts["tflite"]))
    interp.allocate_tensors()
    ref = []
    for i in range(2):
        interp.set_tensor(interp.get_input_details()[0]["index"], batch[i:i + 1].transpose(0, 2, 3, 1))
        interp.invoke()
        ref.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    np.testing.assert_allclose(out, np.concatenate(ref), rtol=1e-4, atol=1e-5)


def test_infer_int8_io_tflite_takes_and_returns_floats(any_target, artifacts):
    """Float inputs are quantized and int8 outputs dequantized on the device, as the host runner does."""
    from edgeprune.export.runtime import load_runner
    batch = np.random.default_rng(3).standard_normal((4, 1, 28, 28)).astype(np.float32)
    out = any_target.infer(artifacts["tflite_int8"], batch)
    assert out.dtype == np.float32 and out.shape == (4, 10)
    np.testing.assert_allclose(out, load_runner(artifacts["tflite_int8"]).run(batch), atol=1e-6)
    fp32 = any_target.infer(artifacts["tflite"], batch)
    assert np.abs(out - fp32).max() < 0.1 * np.abs(fp32).max()


def test_wrong_input_shape_is_a_clear_error(any_target, artifacts):
    with pytest.raises(BadInputError, match="does not match the model's input"):
        any_target.infer(artifacts["onnx"], np.zeros((1, 3, 32, 32), np.float32))


def test_corrupt_model_is_bad_input(any_target, artifacts):
    with pytest.raises(BadInputError, match="cannot load"):
        any_target.measure(artifacts["corrupt"], use_cache=False)


def test_odd_file_names_are_quoted(any_target, artifacts, tmp_path):
    odd = tmp_path / "my model $(touch pwned); rm -rf x 'q' `id`.onnx"
    shutil.copy(artifacts["onnx"], odd)
    m = any_target.measure(odd, use_cache=False)
    assert m.runs >= 10
    assert not list(Path("/").glob("pwned")) and not list(Path.cwd().glob("pwned"))
    assert not list(tmp_path.glob("pwned"))


def test_session_reuses_one_agent(any_target, artifacts):
    with any_target.session() as session:
        any_target.measure(artifacts["onnx"], use_cache=False)
        pid = session.client.hello["pid"]
        with any_target, any_target.session() as inner:
            assert inner is session  # nested blocks share the outer session
            inner.measure(artifacts["tflite"], use_cache=False)
        assert session.client.hello["pid"] == pid and session.client.channel is not None
    assert session.client.channel is None  # closed with the outermost block


def test_cache_hit_and_key(any_target, artifacts):
    cache = MeasurementCache()
    first = any_target.measure(artifacts["onnx"], runs=11)
    again = any_target.measure(artifacts["onnx"], runs=11)
    assert not first.cached and again.cached and again.latency_ms == first.latency_ms
    assert cache.count(first.model_sha256) >= 1
    assert not any_target.measure(artifacts["onnx"], runs=12).cached  # other settings, other key


def test_missing_runtime_on_device(any_target, artifacts):
    import dataclasses
    hidden = dataclasses.replace(any_target, env={"EDGEPRUNE_AGENT_HIDE_RUNTIMES": "1"})
    with pytest.raises(TargetUnreachableError, match="runtime onnxruntime is not installed on the device"):
        hidden.measure(artifacts["onnx"], use_cache=False)
