"""ExportConfig validates in __post_init__ and round-trips to a dict."""
from __future__ import annotations

import pytest

from edgeprune.errors import BadInputError
from edgeprune.export import ExportConfig


def test_round_trip():
    cfg = ExportConfig(format="tflite", precision="int8", node_precision={"fc": "fp32"},
                       input_shape=(1, 28, 28), int8_io=False)
    assert ExportConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["version"] == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "coreml"}, "format must be one of"),
    ({"precision": "int4"}, "precision must be one of"),
    ({"opset": 13}, "opset must be >= 17"),
    ({"node_precision": {"fc": "fp32"}}, "need precision='int8'"),
    ({"precision": "int8", "node_precision": {"fc": "int3"}}, "node_precision"),
    ({"input_shape": (28, 28)}, "input_shape must be"),
    ({"calibration_samples": 0}, "must be >= 1"),
])
def test_invalid(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        ExportConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(BadInputError, match="unknown ExportConfig keys: colour"):
        ExportConfig.from_dict({"colour": "red"})


def test_format_from_suffix():
    assert ExportConfig.for_path("m.tflite").format == "tflite"
    with pytest.raises(BadInputError, match="cannot tell the format"):
        ExportConfig.for_path("m.bin")
