"""Conformance: every CNN family a user is likely to bring goes through train, prune (two
criteria), export (ONNX and TFLite at fp32 and int8), verify and profile."""
import pytest

from tests.conformance.pipeline import ARTIFACTS, CRITERIA, family_refs, run_family

pytestmark = [pytest.mark.slow, pytest.mark.conformance]
INT8_AGREEMENT = 0.98


@pytest.mark.parametrize("family", sorted(family_refs()))
def test_family_conforms(family, tmp_path):
    record = run_family(family, tmp_path, recover_all=False)
    steps = record["steps"]
    failed = {k: v["error"] for k, v in steps.items() if not v["ok"]}
    assert not failed, "\n".join(f"{k}: {e}\n{steps[k]['traceback']}" for k, e in failed.items())
    # a classifier, far from chance: the quick train aims at TRAIN_TARGET, but ConvNeXt's
    # LayerNorm blocks learn slowly (measured 83-87% after 7 epochs of 6,000 images)
    assert steps["train"]["accuracy"] > 80, steps["train"]
    for criterion in CRITERIA:
        pruned = steps[f"prune-{criterion}"]
        assert pruned["params_after"] < 0.6 * pruned["params_before"], pruned
    assert steps[f"prune-{CRITERIA[0]}"]["accuracy"] > 80, steps  # recovered, far from chance
    for fmt, precision in ARTIFACTS:
        step = steps[f"{fmt}-{precision}"]
        assert step["passed"], step
        floor = INT8_AGREEMENT if precision == "int8" else 0.99
        assert step["top1_agreement"] >= floor, (fmt, precision, step)
    for precision in ("fp32", "int8"):
        m = steps["profile"][precision]
        assert m["source"] == "device" and m["runs"] >= 50 and m["p50_ms"] > 0
