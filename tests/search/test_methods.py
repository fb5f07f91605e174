"""The method registry, and the two built-in methods' proposals on a real model: random specs
stay under the budget's computed cost and are the same on every call; the adaptive loop rolls
back and halves its step, replayed from the history alone."""
import pytest
import torch

from edgeprune.analysis import analyze
from edgeprune.errors import BadInputError
from edgeprune.models import create_model
from edgeprune.pruning import prune_to_spec
from edgeprune.search import Candidate, History, Proposal, SearchContext, create_searcher, list_methods
from edgeprune.search import make_policy, parse_budget
from edgeprune.search.methods.adaptive import LoopState

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("resnet20", width=8).eval()


def context(model, policy, budget=None, **options):
    calib = [(torch.rand(16, *SHAPE), torch.zeros(16, dtype=torch.long))]
    return SearchContext(model, SHAPE, calib, make_policy(policy, parse_budget(policy, budget), None),
                         options=options)


def baseline(model, p50=10.0):
    r = analyze(model, SHAPE)
    return Candidate(0, Proposal({}, "measure"), "x", accuracy=95.0, params=r.params, macs=r.macs,
                     artifact_bytes=r.model_bytes["fp32"], p50_ms=p50, source="device",
                     artifact="candidates/iter-000.onnx", good=True)


def test_registry_lists_each_method_with_its_paper():
    methods = {m["name"]: m for m in list_methods()}
    assert {"adaptive", "random"} <= set(methods)
    assert "Revisiting Random Channel Pruning" in methods["random"]["paper"]
    assert "Adaptive Activation-based" in methods["adaptive"]["paper"]


def test_unknown_method_and_option_are_named(model):
    with pytest.raises(BadInputError, match="unknown search method 'amc2'.*adaptive"):
        create_searcher("amc2", context(model, "accuracy"))
    with pytest.raises(BadInputError, match="method random has no option stepp; its options: .*samples"):
        create_searcher("random", context(model, "accuracy", stepp=1))


def test_random_specs_fit_the_budget_and_repeat(model):
    base = baseline(model)
    budget = 0.5 * base.artifact_bytes
    ctx = context(model, "memory", f"{int(budget)}B", samples=6, measure_top=2, rounds=1)
    searcher = create_searcher("random", ctx)
    history = History(candidates=[base])
    first = searcher.ask(history)
    again = create_searcher("random", ctx).ask(history)  # a resumed run draws the same specs
    assert len(first) == 6 and [p.spec for p in first] == [p.spec for p in again]
    assert all(p.fidelity == "estimate" and p.parent is None for p in first)
    assert len({tuple(sorted(p.spec.items())) for p in first}) > 1
    for p in first:
        trial = create_model("resnet20", width=8)
        prune_to_spec(trial, p.spec, torch.zeros(1, *SHAPE))
        assert analyze(trial, SHAPE).model_bytes["fp32"] <= budget  # computed cost under the budget


def test_random_measures_the_most_accurate_estimates_then_stops(model):
    base = baseline(model)
    ctx = context(model, "memory", f"{int(0.5 * base.artifact_bytes)}B", samples=5, measure_top=2, rounds=1)
    searcher = create_searcher("random", ctx)
    history = History(candidates=[base])
    for i, p in enumerate(searcher.ask(history), start=1):
        history.append(Candidate(i, p, "random", accuracy=80.0 + i, params=1, macs=1, artifact_bytes=1))
    finalists = searcher.ask(history)
    assert [p.fidelity for p in finalists] == ["measure", "measure"]
    assert [p.spec for p in finalists] == [history.candidates[5].proposal.spec, history.candidates[4].proposal.spec]
    assert not searcher.done(history)
    for i, p in enumerate(finalists, start=6):
        history.append(Candidate(i, p, "random", accuracy=60.0, params=1, macs=1, artifact_bytes=1,
                                 artifact="a.onnx", source="device", good=False))
    assert searcher.done(history)  # one round, its finalists measured


def test_adaptive_proposes_from_the_last_good_state_and_halves_after_a_miss(model):
    ctx = context(model, "accuracy", step=0.2)
    searcher = create_searcher("adaptive", ctx)
    base = baseline(model)
    history = History(candidates=[base])
    first = searcher.ask(history)[0]
    assert first.fidelity == "measure" and first.parent is None and first.extra["threshold"] == pytest.approx(0.2)

    def measured(i, threshold, step, good, parent=None):
        p = Proposal({}, "measure", parent, "activation", extra={"threshold": threshold, "step": step,
                                                                  **{k: first.extra[k] for k in ("start_threshold", "start_step")}})
        return Candidate(i, p, "adaptive", accuracy=95.0 if good else 50.0, artifact="a.onnx", source="device", good=good)

    history.append(measured(1, 0.2, 0.2, True))
    history.append(measured(2, 0.4, 0.2, False, parent=1))
    loop = searcher.replay(history)
    assert isinstance(loop, LoopState)
    assert (loop.state.iteration, loop.threshold, loop.step, loop.resets) == (1, 0.2, 0.1, 1)
    ctx.load_state = lambda i: create_model("resnet20", width=8).eval()
    nxt = searcher.ask(history)[0]
    assert nxt.parent == 1 and nxt.extra["threshold"] == pytest.approx(0.3)


def test_random_aims_low_when_the_measurements_say_the_budget_is_below_the_overhead(model):
    """Measured candidates as slow as the baseline put the proxy's budget at no MACs at all:
    the next round samples at the floor, not at random shares (the accuracy policy's way)."""
    base = baseline(model)
    ctx = context(model, "latency", "0.5x", samples=3, measure_top=1, rounds=2)
    searcher = create_searcher("random", ctx)
    history = History(candidates=[base])
    slow = Candidate(1, Proposal({}, "measure"), "random", accuracy=95.0, params=1, macs=base.macs // 2,
                     p50_ms=base.p50_ms, source="device", artifact="a.onnx")
    history.append(slow)
    key, goal = searcher._goal(history)
    assert key == "macs" and goal == pytest.approx(0.05 * base.macs)


def test_random_samples_against_the_latency_table_on_its_channel_multiple(model):
    """With a latency predictor (the target's table, as compress passes it) random search draws
    specs whose PREDICTED p50 is under the aim, on the table's channel multiple; the predictor
    here is the table's interface fed by a known cost (MACs), so the check is exact."""
    base = baseline(model, p50=10.0)
    full = analyze(model, SHAPE).macs
    seen = []

    def predict(m):
        seen.append(m)
        return 10.0 * analyze(m, SHAPE).macs / full

    ctx = context(model, "latency", "0.5x", samples=5, measure_top=1, rounds=1)
    ctx.predict_latency, ctx.channel_multiple = predict, 4
    proposals = create_searcher("random", ctx).ask(History(candidates=[base]))
    assert len(proposals) == 5 and seen
    for p in proposals:
        assert all(n % 4 == 0 for n in p.spec.values())  # on the multiple
        trial = create_model("resnet20", width=8)
        prune_to_spec(trial, p.spec, torch.zeros(1, *SHAPE))
        assert predict(trial) <= 0.9 * 0.5 * 10.0 + 1e-9  # under AIM x the budget, as predicted
