"""int8 slower than fp32: the note, the profile fields, and `profile --precision int8` measuring
the fp32 export of the same model on the same target."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edgeprune.errors import BadInputError
from edgeprune.export import int8_slowdown, int8_slowdown_note


def test_note_only_when_int8_is_slower():
    assert int8_slowdown_note(1.0, 1.0) is None and int8_slowdown_note(1.04, 1.0) is None
    note = int8_slowdown_note(3.9, 1.3, "x86-ort")
    assert note.startswith("warning: int8 is 3.0x slower than fp32 on x86-ort") and "\n" not in note
    assert "p50 3.9 ms vs 1.3 ms" in note
    assert int8_slowdown(3.9, 1.3) == {"slower": True, "int8_p50_ms": 3.9, "fp32_p50_ms": 1.3, "ratio": 3.0}
    with pytest.raises(BadInputError):
        int8_slowdown(0.0, 1.0)


def test_profile_fields_and_warning(capsys):
    from edgeprune.commands.profile import _against_fp32

    slow, fast = SimpleNamespace(p50_ms=6.0), SimpleNamespace(p50_ms=2.0)
    d = _against_fp32(slow, fast, "x86-ort")
    assert d["int8_slower_than_fp32"] is True and d["int8_vs_fp32"]["ratio"] == 3.0
    assert "warning: int8 is 3.0x slower than fp32 on x86-ort" in capsys.readouterr().err
    assert _against_fp32(fast, slow, "x86-ort")["int8_slower_than_fp32"] is False
    assert capsys.readouterr().err == ""
    assert _against_fp32(fast, None, "x86-ort") == {"int8_slower_than_fp32": None, "int8_vs_fp32": None}


@pytest.mark.parametrize("how", ["model", "artifact"])
def test_profile_int8_measures_fp32_too(cli, tmp_path, how):
    from edgeprune.models import create_model, save_checkpoint

    path = tmp_path / "r.pt"  # latency needs no training
    save_checkpoint(path, create_model("resnet20"), "resnet20", {}, {"input_shape": [1, 28, 28], "num_classes": 10})
    timing = ("--target", "x86-ort", "--runs", "10", "--min-seconds", "0.2", "--warmup", "1", "--json", "--no-cache")
    if how == "model":
        res = cli("profile", str(path), "--precision", "int8", "--data", "mnist", *timing)
    else:
        art = tmp_path / "r.onnx"
        assert cli("export", str(path), "--precision", "int8", "--data", "mnist", "--out", str(art)).returncode == 0
        res = cli("profile", str(art), "--reference", str(path), *timing)
    assert res.returncode == 0, res.stderr[-2000:]
    d = json.loads(res.stdout)
    cmp = d["int8_vs_fp32"]
    assert cmp["int8_p50_ms"] == pytest.approx(d["latency_ms"]["p50"], rel=1e-3) and cmp["fp32_p50_ms"] > 0
    assert d["int8_slower_than_fp32"] == cmp["slower"]
    assert ("warning: int8 is" in res.stderr) == cmp["slower"]
