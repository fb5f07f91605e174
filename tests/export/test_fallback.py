"""The measured float fallback: an int8 artifact that disagrees with float gets its costliest
layers moved to float until it agrees (edgeprune.export.fallback)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.export import ExportConfig, artifact_precision, export, float_layers, node_precisions, verify
from edgeprune.export.fallback import ladder
from edgeprune.models import Checkpoint

CHECK = dict(calibration_samples=128, check_samples=256)


def _outlier_net(train) -> Checkpoint:
    """A small CNN, briefly trained, whose middle activation then gets one channel 1000x the
    others. The function stays the same (the next conv divides it back), but one int8 scale for
    that tensor rounds every other channel to nothing: a realistic outlier-activation fault."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    with torch.no_grad():
        net[2].bias[0] = 1.0  # a channel that is on nearly everywhere...
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(train.y), (64,), generator=gen)
        loss = nn.functional.cross_entropy(net(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        net[2].weight[0] *= 1000.0  # ...at 1000x the scale of the others
        net[2].bias[0] *= 1000.0
        net[4].weight[:, 0] /= 1000.0
    meta = {"input_shape": [1, 28, 28], "num_classes": 10, "dataset": "mnist"}
    return Checkpoint(model=net.eval(), arch="outlier-net", metadata=meta)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_outlier_layer_goes_to_float_until_int8_agrees(tmp_path, mnist_train, mnist_test, fmt):
    net = _outlier_net(mnist_train)
    data = mnist_train.subset(384)
    plain = export(net, ExportConfig(format=fmt, precision="int8", min_agreement=0.0, **CHECK),
                   tmp_path / f"plain.{fmt}", data=data)
    fixed = export(net, ExportConfig(format=fmt, precision="int8", **CHECK), tmp_path / f"fixed.{fmt}", data=data)
    before, after = (verify(p, net, mnist_test, samples=500) for p in (plain, fixed))
    assert after.reference_accuracy > 0.6, after.to_dict()  # a classifier, not near-tied logits
    assert before.top1_agreement < 0.9, before.to_dict()  # the fault is real
    assert after.top1_agreement >= 0.98, after.to_dict()
    assert len(float_layers(fixed)) > len(float_layers(plain)), (float_layers(plain), float_layers(fixed))
    assert artifact_precision(fixed) == "mixed"  # the other layers stay int8


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_with_every_weighted_layer_in_float_is_mixed_not_fp32(zoo, tmp_path, mnist_train, mnist_test, fmt):
    """A fallback that went past its share may float every conv: the ops between them (here
    ResNet-20's residual adds) still round to int8, so the file verifies against int8's line,
    not fp32's 0.999 (an Inception so floated failed at 0.996)."""
    net = zoo.get("resnet20")
    weighted = {name: "fp32" for name, m in net.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    out = export(net, ExportConfig(format=fmt, precision="int8", node_precision=weighted, **CHECK),
                 tmp_path / f"floated.{fmt}", data=mnist_train.subset(384))
    assert set(node_precisions(out).values()) == {"fp32"}
    assert artifact_precision(out) == "mixed"
    assert verify(out, net, mnist_test, samples=200).threshold == 0.98


def test_ladder_stops_at_the_first_rung_that_agrees():
    groups = [["a"], ["b", "b2"], ["c"], ["d"], ["e"], ["f"], ["g"], ["h"], ["i"], ["j"]]
    built = []

    def build(floated):
        built.append(floated)
        return f"art{len(floated)}", ((1.0 if "c" in floated else 0.5), 0.0)

    art, score, floated = ladder("first", (0.4, 0.0), 0.99, lambda: groups, build)
    assert built == [["a"], ["a", "b", "b2"], ["a", "b", "b2", "c", "d"]]  # rungs of 1, 2, 4 groups
    assert (art, score[0], floated) == ("art5", 1.0, ["a", "b", "b2", "c", "d"])


def test_ladder_keeps_the_best_rung_when_none_agrees_and_skips_a_passing_artifact():
    def build(floated):
        return f"art{len(floated)}", ({1: 0.7, 2: 0.9, 4: 0.8}[len(floated)], 0.0)

    groups = [["a"], ["b"], ["c"], ["d"], ["e"], ["f"]]
    art, score, floated = ladder("first", (0.5, 0.0), 0.99, lambda: groups, build)
    assert (art, score[0], floated) == ("art2", 0.9, ["a", "b"])

    def never():
        raise AssertionError("ranked although the artifact agrees")

    assert ladder("first", (0.995, 30.0), 0.99, never, build) == ("first", (0.995, 30.0), [])


def test_ladder_never_floats_more_than_three_quarters_of_the_costly_nodes():
    """Floating every layer would agree, but the artifact would be a float model labelled int8."""
    built = []

    def build(floated):
        built.append(floated)
        return f"art{len(floated)}", ((1.0 if len(floated) == 4 else 0.6 + 0.1 * len(floated)), 0.0)

    art, score, floated = ladder("first", (0.5, 0.0), 0.99, lambda: [["a"], ["b"], ["c"], ["d"]], build)
    assert built == [["a"], ["a", "b"]]
    assert (art, score[0], floated) == ("art2", 0.8, ["a", "b"])


def test_ladder_goes_past_the_share_only_to_pass_verification():
    """Within the share the best rung agrees 0.8: below the floor (what verification needs),
    so the ladder floats on, past the share, and stops at the first rung at the floor."""
    built = []

    def build(floated):
        built.append(floated)
        return f"art{len(floated)}", ({1: 0.7, 2: 0.8, 4: 0.97, 5: 0.992}[len(floated)], 0.0)

    groups = [["a"], ["b"], ["c"], ["d"], ["e"]]
    art, score, floated = ladder("first", (0.5, 0.0), 0.995, lambda: groups, build, floor=0.95)
    assert built == [["a"], ["a", "b"], ["a", "b", "c", "d"]]  # 4 of 5 is past 3/4: floor reached there
    assert (art, score[0], floated) == ("art4", 0.97, ["a", "b", "c", "d"])
    built.clear()
    art, score, floated = ladder("first", (0.5, 0.0), 0.995, lambda: groups, build, floor=0.99)
    assert [len(f) for f in built] == [1, 2, 4, 5] and (art, score[0]) == ("art5", 0.992)
    built.clear()
    ladder("first", (0.5, 0.0), 0.995, lambda: groups, build, floor=0.75)  # 0.8 within the share passes
    assert [len(f) for f in built] == [1, 2]


def test_fallback_checks_on_the_check_data_when_given(tmp_path):
    """With `check_data` the fallback measures agreement on those images (a validation split:
    images the model did not train on), else on the data set's images after the calibration ones."""
    import numpy as np

    from edgeprune.export._export import _held_out, _Stages
    from edgeprune.export._source import Source

    src = Source(nn.Conv2d(1, 2, 3), (1, 8, 8))
    calibration = np.zeros((400, 1, 8, 8), np.float32)
    check = np.ones((300, 1, 8, 8), np.float32)
    cfg = ExportConfig(precision="int8", **CHECK)
    held_out = _held_out(src, [cfg], check)
    assert held_out.shape == (256, 1, 8, 8)
    assert (_Stages(src, tmp_path, calibration, held_out).checks(cfg) == 1).all()
    plain = _Stages(src, tmp_path, calibration).checks(cfg)
    assert plain.shape == (256, 1, 8, 8) and (plain == 0).all()
    assert _held_out(src, [ExportConfig(precision="fp32")], check) is None
    with pytest.raises(Exception, match="does not match"):
        _held_out(src, [cfg], np.ones((4, 3, 8, 8), np.float32))
