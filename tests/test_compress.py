"""`compress` end to end on the local x86-ort target (real agent, real onnxruntime):
artifacts and reports, measured provenance, and an interrupted run resumed to the same result."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
FAST_JOB = ["--finetune-epochs", "1", "--finetune-samples", "400", "--runs", "20"]
FAST = FAST_JOB + ["--max-iterations", "3", "--step", "0.3"]  # the adaptive method's own settings


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("compress") / "r20.pt"
    out = run_cli("train", "--arch", "resnet20", "--width", "8", "--epochs", "2", "--train-samples", "2000",
                  "--batch-size", "32", "--out", str(path))
    assert out.returncode == 0, out.stderr
    return path


def compress_args(model, out, policy="accuracy", extra=(), fast=FAST):
    args = ["compress", str(model), "--target", "x86-ort", "--policy", policy, "--data", "mnist",
            "--out", str(out), *fast, *extra]
    if policy == "accuracy":
        args += ["--tolerance", "2"]
    return args


def test_compress_latency_writes_measured_result(small_model, tmp_path):
    out = tmp_path / "lat"
    res = run_cli(*compress_args(small_model, out, "latency", ["--budget", "0.9x", "--json"]))
    assert res.returncode in (0, 1), res.stderr
    result = json.loads(res.stdout)
    assert (res.returncode == 0) == result["met"]
    for name in ("model.pt", "model.onnx", "model.tflite", "result.json", "report.html", "report.md",
                 "pareto.png", "history.jsonl"):
        assert (out / name).exists(), name
    base, final = result["baseline"]["measurement"], result["final"]["measurement"]
    assert base["source"] == final["source"] == "device"  # x86-ort is this very machine
    assert final["runtime"]["name"] == "onnxruntime" and final["runs"] >= 20
    if result["met"]:
        assert final["latency_ms"]["p50"] <= 0.9 * base["latency_ms"]["p50"]
    # a ratio budget: baseline and final benched interleaved, and so was every candidate
    assert result["ab"]["rounds"] == 4 and len(result["ab"]["round_ratios"]) == 4
    assert all(any(n.startswith("interleaved A/B: 4 paired benches") for n in m["notes"]) for m in (base, final))
    candidates = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()[1:]]
    assert candidates and all(c["baseline_p50_ms"] > 0 and c["ab"]["rounds"] == 4 for c in candidates)
    assert candidates[0]["fidelity"] == "latency" and candidates[0]["accuracy"] is None  # the shapes-only probe
    assert result["method"] == "adaptive" and result["search"]["estimates"] == 0
    assert result["search"]["measurements"] == len(candidates)
    for c in candidates:  # meeting the budget takes a second A/B, and the slower one stands
        if c["met_budget"] and c["fidelity"] == "measure":
            assert len(c["confirmation_ratios"]) == 2
            assert c["p50_ms"] / c["baseline_p50_ms"] == pytest.approx(max(c["confirmation_ratios"]))
    assert any(c["met_budget"] for c in candidates) or not result["met"]
    assert result["verification"]["passed"] and result["verification"]["target"] == "x86-ort"
    report = (out / "report.md").read_text()
    assert "onnxruntime" in report and "Channels per layer" in report and "device" in report
    assert "benched interleaved, 4 rounds each" in report
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == result["iterations"] + 1


def test_compress_memory_size_budget(small_model, tmp_path):
    out = tmp_path / "mem"
    res = run_cli(*compress_args(small_model, out, "memory", ["--budget", "150KB", "--json"]))
    assert res.returncode in (0, 1), res.stderr
    result = json.loads(res.stdout)
    assert result["policy"] == "memory" and (res.returncode == 0) == result["met"]
    if result["met"]:
        assert result["final"]["model_bytes"] <= 150_000
    assert result["baseline"]["model_bytes"] > 150_000  # the budget forced pruning


def test_random_search_estimates_many_and_measures_few(small_model, tmp_path):
    out = tmp_path / "rnd"
    options = ["--method", "random", "--method-option", "samples=12", "--method-option", "measure_top=2",
               "--method-option", "rounds=2"]
    res = run_cli(*compress_args(small_model, out, "memory", ["--budget", "150KB", "--json", *options], FAST_JOB))
    assert res.returncode in (0, 1), res.stderr
    result = json.loads(res.stdout)
    assert (res.returncode == 0) == result["met"] and result["method"] == "random"
    search = result["search"]
    assert search["estimates"] in (12, 24) and 1 <= search["measurements"] <= 4
    lines = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    estimates = [c for c in lines if c["fidelity"] == "estimate"]
    assert all(c["source"] != "device" and c["artifact"] is None for c in estimates)  # no target involved
    assert all(c["artifact_bytes"] <= 150_000 for c in estimates)  # computed cost within the budget
    measured = [c for c in lines[1:] if c["fidelity"] == "measure"]
    best = sorted((c for c in estimates if c["proposal"]["extra"]["round"] == 0), key=lambda c: -c["accuracy"])
    assert measured[0]["proposal"]["spec"] == best[0]["proposal"]["spec"]  # the top estimate is measured first
    if result["met"]:
        assert result["final"]["model_bytes"] <= 150_000 and result["guard_passed"]


def test_unknown_method_option_is_refused_before_anything_is_written(small_model, tmp_path):
    out = tmp_path / "bad"
    res = run_cli(*compress_args(small_model, out, "memory", ["--budget", "150KB", "--method", "random",
                                                              "--method-option", "sample=3"], FAST_JOB))
    assert res.returncode == 2 and "has no option sample" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_existing_out_dir_needs_resume(small_model, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text("{}")
    res = run_cli(*compress_args(small_model, out))
    assert res.returncode == 2 and "--resume" in res.stderr


def test_killed_run_resumes_to_the_same_result(small_model, tmp_path):
    whole = tmp_path / "whole"
    res = run_cli(*compress_args(small_model, whole, extra=["--json"]))
    assert res.returncode in (0, 1), res.stderr
    expected = json.loads(res.stdout)

    cut = tmp_path / "cut"
    exe = Path(sys.executable).with_name("edgeprune")
    proc = subprocess.Popen([str(exe), *compress_args(small_model, cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    history = cut / "history.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "result.json").exists()

    res = run_cli(*compress_args(small_model, cut, extra=["--resume", "--json"]))
    assert res.returncode in (0, 1), res.stderr
    resumed = json.loads(res.stdout)
    for key in ("iterations", "final_iteration", "met"):
        assert resumed[key] == expected[key]
    for key in ("accuracy", "val_accuracy", "params", "macs"):
        assert resumed["final"][key] == expected["final"][key]


def test_unrecoverable_pruning_exits_1_and_ships_a_guarded_model(small_model, tmp_path):
    """No fine-tuning and a size budget that needs deep pruning: candidates in budget lose
    accuracy, so the job must say not met (exit 1) and ship a candidate that passed the guard."""
    out = tmp_path / "hard"
    args = ["compress", str(small_model), "--target", "x86-ort", "--policy", "memory", "--budget", "15KB",
            "--tolerance", "0.5", "--finetune-epochs", "0", "--max-iterations", "4", "--step", "0.4",
            "--runs", "20", "--out", str(out), "--json"]
    res = run_cli(*args)
    assert res.returncode == 1, res.stderr
    result = json.loads(res.stdout)
    assert result["met"] is False and result["guard_passed"] is True
    assert "guard" in result["reason"]
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    shipped = next(r for r in rows if r["iteration"] == result["final_iteration"])
    assert rows[0]["accuracy"] - shipped["accuracy"] <= 0.5 + 1e-9
    assert not any(r.get("good") and r.get("met_budget") for r in rows[1:])
    assert result["final"]["val_accuracy"] == shipped["accuracy"]
    assert "NOT MET" in (out / "report.md").read_text()


def test_untrained_baseline_is_refused_before_anything_is_written(tmp_path):
    from edgeprune.models import create_model, save_checkpoint

    path = tmp_path / "random.pt"
    save_checkpoint(path, create_model("resnet20", width=8), "resnet20", {"width": 8},
                    {"input_shape": [1, 28, 28], "num_classes": 10, "dataset": "mnist"})
    out = tmp_path / "o"
    res = run_cli("compress", str(path), "--target", "x86-ort", "--policy", "latency", "--budget", "0.5x",
                  "--out", str(out), "--json")
    assert res.returncode == 2, res.stderr
    assert "chance" in res.stderr and "--allow-untrained" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()  # no run.json or states/: the corrected command must not be refused
