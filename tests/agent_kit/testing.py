"""Helpers for tests and benchmarks: tiny artifacts, emulated targets that clean up after themselves.

Real runtimes, real sshd, real adb client: nothing here is mocked. Emulated targets need root
(cgroups, sshd); `needs_root` skips locally but FAILS when CI=true, so CI cannot silently skip.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from edgeprune.targets.target import Target


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def emulation_missing() -> Optional[str]:
    """Why emulated targets cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "emulated targets need root (cgroups, sshd)"
    if not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh-keygen") is None:
        return "openssh-server is not installed (run .ci/system-deps.sh)"
    if shutil.which("adb") is None:
        return "adb is not installed (run .ci/system-deps.sh)"
    return None


def require_emulation() -> None:
    """Skip (locally) or fail (CI=true) when emulated targets cannot run."""
    import pytest
    reason = emulation_missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def tiny_onnx(path: Path, channels: int = 16) -> Path:
    """A small CNN (NCHW 1x1x28x28 -> 10) exported from torch with the TorchScript exporter."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 2 * channels, 3,
                          padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, 10))
    model.eval()
    torch.onnx.export(model, (torch.randn(1, 1, 28, 28),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    return path


def tiny_tflite(path: Path, channels: int = 16, int8: bool = False) -> Path:
    """A small NHWC CNN (1x28x28x1 -> 10) converted with TensorFlow's TFLiteConverter;
    `int8`: full-integer, with int8 input and output tensors, calibrated on random data."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.standard_normal((3, 3, 1, channels)).astype(np.float32) * 0.3)
    w2 = tf.constant(rng.standard_normal((3, 3, channels, 2 * channels)).astype(np.float32) * 0.1)
    w3 = tf.constant(rng.standard_normal((2 * channels, 10)).astype(np.float32) * 0.1)

    @tf.function(input_signature=[tf.TensorSpec([1, 28, 28, 1], tf.float32)])
    def net(x: Any) -> Any:
        h = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        h = tf.nn.relu(tf.nn.conv2d(h, w2, 1, "SAME"))
        return tf.matmul(tf.reduce_mean(h, axis=[1, 2]), w3)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.standard_normal((1, 28, 28, 1)).astype(np.float32)]
                                                    for _ in range(16))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return path


def memory_hog_onnx(path: Path, megabytes: int = 600) -> Path:
    """A tiny file whose model allocates `megabytes` at run time (ConstantOfShape): for OOM tests."""
    import onnx
    from onnx import TensorProto, helper
    n = megabytes * 1024 * 1024 // 4
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [n])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=1),
             helper.make_node("Add", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "hog", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def quick_target(**fields: Any) -> Target:
    """A Target with short measurement settings, for tests that are not about the protocol defaults."""
    base = {"runs": 10, "warmup": 1, "min_seconds": 0.2, "warmup_seconds": 0.1, "retries": 1, "backoff": 0.2,
            "connect_timeout": 5.0, "op_timeout": 30.0, "bench_timeout": 60.0}
    base.update(fields)
    return Target(**base)


@contextlib.contextmanager
def emulated(target: Target) -> Iterator[Target]:
    """Bring an emulated target up for the block and always take it down."""
    from edgeprune.targets import emulate
    emulate.up(target)
    try:
        yield target
    finally:
        emulate.down(target.name)
