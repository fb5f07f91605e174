"""The Evaluator on a trained model and the real x86-ort target: an estimate touches no
target and labels its latency a proxy; a measurement fine-tunes, exports and measures, and
both sides of a call pickle (a distributed executor can run them elsewhere)."""
import dataclasses
import pickle

import pytest
import torch

from edgeprune.data import load_dataset
from edgeprune.models import Checkpoint, create_model
from edgeprune.pruning import spec_for_ratio
from edgeprune.search import Evaluator, EvaluatorConfig, History, Proposal, Splits, make_policy, parse_budget
from edgeprune.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    from edgeprune.targets import load_target

    torch.manual_seed(0)
    model = create_model("resnet20", width=8)
    tr = load_dataset("mnist", "train")
    train(model, tr.subset(2000), TrainConfig(epochs=1, batch_size=32, progress=False))
    ckpt = Checkpoint(model.eval(), "resnet20", {"width": 8}, {},
                      {"input_shape": [1, 28, 28], "num_classes": 10, "dataset": "mnist"})
    data = Splits(tr, load_dataset("mnist", "val"), load_dataset("mnist", "test"), list(tr.subset(128).loader(64)))
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    cfg = EvaluatorConfig(runs=20, finetune_epochs=1, finetune_samples=500, estimate_bn_samples=256)
    out = tmp_path_factory.mktemp("evaluator")
    target = load_target("x86-ort")
    with target.session():
        ev = Evaluator(ckpt, target, out, data, policy, cfg)
        history = History(out / "history.jsonl")
        history.append(ev.baseline())
        ev.update(history)
        yield ev, history


def _bn_only(ev: Evaluator) -> Evaluator:
    """The same run's Evaluator with the estimate's tiny fine-tune off (BN recalibration alone)."""
    return Evaluator(ev.ckpt, ev.target, ev.out, ev.data, ev.policy, dataclasses.replace(ev.cfg, estimate_steps=0))


def test_an_estimate_prunes_recalibrates_and_predicts_without_the_target(evaluator):
    ev, history = evaluator
    spec = spec_for_ratio(ev.ckpt.model, 0.5)
    before = dict(ev.counts)
    c = ev.evaluate(Proposal(spec, "estimate"), history.next_iteration)
    assert c.source == "proxy" and c.measurement is None and c.artifact is None
    assert c.params < 0.5 * history.baseline.params and c.macs < history.baseline.macs
    assert 0 <= c.accuracy <= 100 and c.good is not None and c.met_budget is False  # a proxy never meets
    assert c.p50_ms == pytest.approx(history.baseline.p50_ms * c.macs / history.baseline.macs, rel=1e-6)
    assert ev.counts["estimate"] == before["estimate"] + 1 and ev.counts["measure"] == before["measure"]
    # BN recalibration alone does not hurt the unpruned model (the tiny fine-tune, on by
    # default, lifts this 1-epoch model by 10+ points: that is what the next test checks). It
    # may help: after 63 training steps the running statistics lag the weights, and on an AMD
    # EPYC host with one thread (the test lanes' setting) recalibration took the model from
    # 44.1% to 51.3% (2026-12-04; on the Intel VM of 2026-12-03 it moved under 5 points)
    bn_only = _bn_only(ev)
    unpruned = bn_only.evaluate(Proposal({}, "estimate"), history.next_iteration)
    assert unpruned.accuracy > history.baseline.accuracy - 5
    assert pickle.loads(pickle.dumps(c)) == c


def test_an_estimate_under_a_peak_memory_budget_takes_the_tables_memory_estimate(evaluator, tmp_path):
    """Under a peak-memory budget an estimate gets the latency table's peak-memory estimate of
    its fp32 ONNX graph (what the table fitted on measured sub-networks); it never meets."""
    from edgeprune.export import export_artifact
    from edgeprune.targets.lut import LatencyTable
    from edgeprune.targets.lut.memory import PeakMemoryModel, onnx_memory

    ev, history = evaluator
    policy = make_policy("memory", parse_budget("memory", "peak:500MB"), None)
    mem = Evaluator(ev.ckpt, ev.target, ev.out, ev.data, policy, dataclasses.replace(ev.cfg, estimate_steps=0))
    mem.update(history)
    model = PeakMemoryModel(baseline_mb=12.0, weights_factor=1.5, activations_factor=3.0)
    mem.table = LatencyTable(key={}, kernels={}, layer_kinds={}, memory={"baseline_mb": 12.0, "model": model.to_dict()})
    mem.predict_latency = lambda m: None  # latency from the FLOPs proxy: this test is about memory
    proposal = Proposal(spec_for_ratio(ev.ckpt.model, 0.5), "estimate")
    c = mem.evaluate(proposal, history.next_iteration)
    graph = onnx_memory(export_artifact(mem.apply(proposal), tmp_path / "c.onnx", input_shape=[1, 28, 28]))
    assert c.peak_memory_mb == pytest.approx(model.estimate_mb(graph), rel=1e-6) and c.peak_memory_mb > 12.0
    assert c.extra["peak_memory_by"].startswith("peak-memory model") and c.source == "proxy"
    assert c.met_budget is False  # within 500 MB by the estimate, but nothing was measured
    plain = _bn_only(ev).evaluate(proposal, history.next_iteration)  # a latency budget: no memory estimate
    assert plain.peak_memory_mb is None and "peak_memory_by" not in plain.extra


def test_an_estimate_distills_a_few_steps_on_teacher_logits_computed_once(evaluator):
    ev, history = evaluator
    spec = spec_for_ratio(ev.ckpt.model, 0.5)
    bn_only = _bn_only(ev)
    before = bn_only.evaluate(Proposal(spec, "estimate"), history.next_iteration)
    tuned = ev.evaluate(Proposal(spec, "estimate"), history.next_iteration)
    assert tuned.accuracy > before.accuracy + 5  # the tiny fine-tune recovers part of what surgery lost
    assert bn_only._soft_targets is None  # estimate_steps=0: no teacher pass at all
    targets = ev.soft_targets()
    assert ev.soft_targets() is targets and len(targets.batches) == ev.cfg.estimate_steps
    x, y, logits = targets.batches[0]
    assert len(x) == ev.cfg.estimate_batch == len(y)
    with torch.no_grad():
        assert torch.allclose(logits, ev.ckpt.model.eval()(x), atol=1e-5)
    again = ev.evaluate(Proposal(spec, "estimate"), history.next_iteration)
    assert again.accuracy == tuned.accuracy  # an estimate is a function of the proposal


def test_a_measurement_fine_tunes_exports_and_measures_on_the_target(evaluator):
    ev, history = evaluator
    proposal = Proposal(spec_for_ratio(ev.ckpt.model, 0.5), "measure")
    c = ev.evaluate(pickle.loads(pickle.dumps(proposal)), history.next_iteration)
    history.append(c)
    assert c.source == "device" and c.measurement["runtime"]["name"] == "onnxruntime"
    assert c.baseline_p50_ms > 0 and c.ab["rounds"] == 4  # a ratio budget: benched beside the baseline
    assert (ev.out / c.artifact).is_file() and ev.state_path(c.iteration).is_file()
    assert c.extra["predicted_p50_ms"] > 0  # what the proxy said before the measurement
    reloaded = ev.load_state(c.iteration)
    assert sum(p.numel() for p in reloaded.parameters()) == c.params
