"""CLI verbs (targets, emulate, profile), profile validation, statistics, cache and the benchmark_model parser."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device_agents.adb import parse_benchmark_model
from edgeprune.errors import BadInputError
from edgeprune.targets import Measurement, list_targets, load_target
from edgeprune.targets.cache import MeasurementCache
from edgeprune.targets.measurement import latency_stats, steady_p50

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeprune.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


def test_shipped_profiles_load_and_describe_themselves():
    names = list_targets()
    for name in ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "android-pixel", "x86-ort",
                 "emu-rpi4", "emu-jetson-nano", "emu-android"):
        assert name in names
        t = load_target(name)
        if name in ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "android-pixel"):
            assert "real" in t.description.lower() and not t.emulated
    assert "stand-in" in load_target("emu-android").description.lower()


def test_bad_profile_is_bad_input(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\ntransport: carrier-pigeon\n")
    with pytest.raises(BadInputError, match="transport must be one of"):
        load_target(str(p))
    p.write_text("name: bad\ntransport: local\nthreds: 4\n")
    with pytest.raises(BadInputError, match="unknown key"):
        load_target(str(p))


def test_latency_stats():
    s = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert s["p50"] == 2.5 and s["mean"] == 2.5 and s["cv"] == pytest.approx(1.2909944 / 2.5)


def test_steady_p50_leaves_out_a_slow_episode_of_under_half_the_blocks():
    rng = np.random.default_rng(0)
    fast, slow = rng.normal(1.0, 0.1, 3000), rng.normal(1.25, 0.1, 2000)  # ms; the episode: 40% of 5 s
    times = np.concatenate([fast[:1500], slow, fast[1500:]])
    plain = float(np.median(times))
    assert plain > 1.05  # the episode drags the p50 of all runs
    assert steady_p50(times) == pytest.approx(1.0, rel=0.02)
    assert steady_p50(fast) == pytest.approx(float(np.median(fast)), rel=0.01)  # no episode: the p50
    assert steady_p50(times[:1500]) is None  # 1.5 s of runs: under 4 half-second blocks


def test_measurement_round_trips_and_cache(tmp_path):
    m = Measurement(target="x", source="device", emulated=False, runtime={"name": "onnxruntime", "version": "1"},
                    threads=1, warmup=1, runs=2, times_ms=[1.0, 2.0], latency_ms=latency_stats([1.0, 2.0]),
                    peak_memory_mb=1.0, memory_method="VmHWM-baseline", model_bytes=3, model_sha256="a" * 64,
                    load_ms=1.0)
    assert Measurement.from_dict(m.to_dict()) == m
    cache = MeasurementCache(tmp_path / "c.sqlite")
    cache.put("k", m, "1", {"runs": 2})
    assert cache.get("k").cached and cache.get("other") is None
    with pytest.raises(ValueError):
        Measurement(**{**m.to_dict(), "source": "guess"})


def test_parse_benchmark_model_output():
    text = ("INFO: Initialized session in 12.5ms.\nRunning benchmark for at least 1 iterations and at least 0.5 seconds\n"
            "count=30 first=2000 curr=1500 min=1400 max=2100 avg=1600.5 std=80\n"
            "Running benchmark for at least 50 iterations and at least 1 seconds\n"
            "count=600 first=1500 curr=1450 min=1390 max=2300 avg=1500 std=60\n"
            "Inference timings in us: Init: 12500, First inference: 2000, Warmup (avg): 1600.5, Inference (avg): 1500\n"
            "Memory footprint delta from the start of the tool (MB): init=3.1 overall=7.25\n")
    r = parse_benchmark_model(text)
    assert r["runs"] == 600 and r["latency_ms"]["mean"] == 1.5 and r["latency_ms"]["cv"] == pytest.approx(0.04)
    assert r["peak_memory_mb"] == 7.25 and r["load_ms"] == 12.5


def test_cli_targets_list_and_show():
    out = cli("targets", "list", "--json")
    assert out.returncode == 0
    assert "emu-rpi4" in [t["name"] for t in json.loads(out.stdout)["targets"]]
    shown = json.loads(cli("targets", "show", "rpi4", "--json").stdout)
    assert shown["transport"] == "ssh" and shown["runtime"] == "tflite"
    bad = cli("targets", "show", "no-such-board")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown target" in bad.stderr


def test_cli_check_and_profile_json(artifacts, tmp_path):
    assert json.loads(cli("targets", "check", "x86-ort", "--json").stdout)["ok"]
    out = cli("profile", str(artifacts["onnx"]), "--target", "x86-ort", "--runs", "10", "--min-seconds", "0.2",
              "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["target"] == "x86-ort" and data["source"] == "device" and data["runs"] >= 10
    assert set(data["latency_ms"]) == {"p50", "p90", "p99", "mean", "std", "cv"}


def test_cli_targets_clean_empties_the_device_cache(artifacts):
    out = cli("profile", str(artifacts["onnx"]), "--target", "x86-ort", "--runs", "10", "--min-seconds", "0.2",
              "--no-cache")
    assert out.returncode == 0, out.stderr
    first = cli("targets", "clean", "x86-ort", "--json")
    assert first.returncode == 0, first.stderr
    cleaned = json.loads(first.stdout)
    assert cleaned["target"] == "x86-ort" and cleaned["removed"] >= 1 and cleaned["freed_bytes"] > 0
    again = json.loads(cli("targets", "clean", "x86-ort", "--json").stdout)
    assert again["removed"] == 0 and again["freed_bytes"] == 0  # nothing left to remove
    missing = cli("targets", "clean")
    assert missing.returncode == 2 and "needs a target NAME" in missing.stderr


def test_cli_profile_exit_codes(artifacts, tmp_path):
    missing = cli("profile", str(tmp_path / "nope.onnx"), "--target", "x86-ort")
    assert missing.returncode == 2 and "not found" in missing.stderr
    corrupt = cli("profile", str(artifacts["corrupt"]), "--target", "x86-ort", "--no-cache")
    assert corrupt.returncode == 2 and "Traceback" not in corrupt.stderr
    down = cli("profile", str(artifacts["onnx"]), "--target", "emu-jetson-nano")
    assert down.returncode == 3 and "emulate up" in down.stderr and "Traceback" not in down.stderr


def test_cli_emulate_without_root_says_so_in_one_line():
    if os.geteuid() != 0:
        out = cli("emulate", "up", "emu-rpi4")
    else:
        nobody = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-m", "edgeprune.cli", "emulate",
                                 "up", "emu-rpi4"], capture_output=True, text=True, cwd=REPO, timeout=120,
                                env={**os.environ, "HOME": "/tmp", "EDGEPRUNE_STATE_DIR": "/tmp/edgeprune-nobody"})
        if "Permission denied" in nobody.stderr and "edgeprune" not in nobody.stderr:
            pytest.skip("nobody cannot read the checkout")
        out = nobody
    assert out.returncode in (2, 3) and "needs root" in out.stderr and out.stderr.count("\n") == 1


def test_cli_emulate_up_status_down():
    from tests.agent_kit import testing
    testing.require_emulation()
    up = cli("emulate", "up", "emu-jetson-nano")
    try:
        assert up.returncode == 0, up.stderr
        status = cli("emulate", "status", "emu-jetson-nano", "--json")
        assert json.loads(status.stdout)["running"]
        check = cli("targets", "check", "emu-jetson-nano", "--json")
        assert check.returncode == 0 and json.loads(check.stdout)["emulated"] is True
    finally:
        down = cli("emulate", "down", "emu-jetson-nano")
    assert down.returncode == 0
    assert cli("emulate", "status", "emu-jetson-nano").returncode == 1


def test_import_edgeprune_targets_is_light():
    heavy = ("torch", "tensorflow", "paramiko", "onnx", "onnxruntime", "ai_edge_litert")
    code = f"import sys, edgeprune.targets; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.fixture(scope="module")
def zoo_checkpoint(tmp_path_factory):
    """A small zoo model (resnet20, MNIST shape) saved as an edgeprune checkpoint."""
    from edgeprune.models import create_model, save_checkpoint
    path = tmp_path_factory.mktemp("zoo") / "resnet20.pt"
    save_checkpoint(path, create_model("resnet20"), "resnet20", {}, {"input_shape": [1, 28, 28], "num_classes": 10})
    return path


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "tflite"])
def test_cli_profile_exports_a_model_for_the_target_runtime(zoo_checkpoint, tmp_path, runtime):
    profile = tmp_path / "host.yaml"
    profile.write_text(f"name: host-{runtime}\ntransport: local\nruntime: {runtime}\nthreads: 1\n")
    out = cli("profile", str(zoo_checkpoint), "--profile", str(profile), "--runs", "10", "--min-seconds", "0.2",
              "--json", "--no-cache")
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["runtime"]["name"] == runtime and data["target"] == f"host-{runtime}"
    assert data["latency_ms"]["p50"] > 0 and data["model_bytes"] > 100_000  # resnet20 fp32 is ~1 MB
    assert f"to {'tflite' if runtime == 'tflite' else 'onnx'}" in out.stderr


def test_cli_profile_rejects_unknown_model_kinds(tmp_path):
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"x")
    out = cli("profile", str(odd), "--target", "x86-ort")
    assert out.returncode == 2 and "expected an artifact" in out.stderr
