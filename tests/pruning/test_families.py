"""Structured pruning on the CNN families users bring (tests/conformance/families.py) and on
the zoo: every family prunes with two criteria, keeps grouped convs whole, honours round_to,
removes exactly what it says, rebuilds from its channel spec after successive prunes, and
skips what it cannot prune with a note instead of failing."""
import logging

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeprune.analysis import analyze
from edgeprune.errors import BadInputError
from edgeprune.models import create_model
from edgeprune.pruning import (
    PruneConfig, Surgeon, channel_spec, is_depthwise, prunable_layers, prune, prune_to_spec,
)
from tests.conformance.families import FAMILIES, GhostModule, _conv_bn

CRITERIA = ["l1", "activation"]
RGB = (3, 32, 32)
ZOO = {name: (lambda name=name: create_model(name)) for name in
       ("resnet20", "mobilenet_v2", "squeezenet1_1", "vgg11")}
SHAPES = {**{name: RGB for name in FAMILIES}, **{name: (1, 28, 28) for name in ZOO}}
FACTORIES = {**FAMILIES, **ZOO}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """These nets are tiny: one thread (tests/conftest.py: one_thread)."""


def build(name: str) -> nn.Module:
    """A family with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = FACTORIES[name]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def example(name: str, batch: int = 1, size: int = 0) -> torch.Tensor:
    c, h, w = SHAPES[name]
    return torch.zeros(batch, c, size or h, size or w)


def calibration(name: str):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, *SHAPES[name], generator=gen), torch.randint(0, 10, (8,), generator=gen))
            for _ in range(2)]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_grouped_convs_whole(model: nn.Module, fresh: nn.Module) -> None:
    groups = {n: m.groups for n, m in fresh.named_modules() if isinstance(m, nn.Conv2d)}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and groups[name] > 1 and not is_depthwise(m):
            assert m.groups == groups[name], name
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_half_pruning_works_on_every_family(family, criterion):
    model = build(family)
    before = params(model)
    notes = []
    spec = prune(model, PruneConfig(ratio=0.5, round_to=4, importance=criterion),
                 example(family), calibration(family), notes=notes)
    assert notes == []
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)  # any input of at least 32x32
    assert params(model) < 0.5 * before
    assert spec == channel_spec(model)
    assert all(c % 4 == 0 or c < 4 for c in spec.values()), spec
    assert_grouped_convs_whole(model, FAMILIES[family]())


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_grouped_convs_lose_whole_positions_of_every_group(ratio):
    """`--ratio 0.3` once left 67 channels in front of a groups=4 conv."""
    model = build("resnext")
    prune(model, PruneConfig(ratio=ratio), example("resnext"))
    assert_grouped_convs_whole(model, FAMILIES["resnext"]())
    assert model(torch.randn(1, *RGB)).shape == (1, 10)


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_spec_rebuilds_the_model_after_successive_prunes(family):
    """What a checkpoint does: fresh architecture + prune_to_spec, then a strict load."""
    model = build(family)
    x = example(family)
    prune(model, PruneConfig(ratio=0.5, importance="l1"), x)
    prune(model, PruneConfig(ratio=0.3, importance="activation", round_to=2), x, calibration(family))
    prune(model, PruneConfig(ratio=0.2, importance="l2"), x)
    fresh = FACTORIES[family]().eval()
    prune_to_spec(fresh, channel_spec(model), x)
    fresh.load_state_dict(model.state_dict(), strict=True)
    probe = torch.randn(2, *SHAPES[family])
    assert torch.equal(fresh(probe), model(probe))
    assert channel_spec(fresh) == channel_spec(model)


@torch.no_grad()
def silence(graph, group) -> None:
    """Zero every parameter slice that torch-pruning removes with these channels."""
    for item in group:
        layer, fn, idxs = item.dep.layer, item.dep.pruning_fn, list(item.idxs)
        if isinstance(layer, nn.Parameter):
            layer[idxs] = 0
        elif isinstance(layer, nn.BatchNorm2d):
            layer.weight[idxs], layer.bias[idxs], layer.running_mean[idxs] = 0, 0, 0
        elif isinstance(layer, (nn.Conv2d, nn.Linear)):
            _silence_layer(layer, graph.is_out_channel_pruning_fn(fn), idxs)


def _silence_layer(layer: nn.Module, out: bool, idxs) -> None:
    if out or (isinstance(layer, nn.Conv2d) and layer.groups == layer.out_channels):
        layer.weight[idxs] = 0
        if layer.bias is not None:
            layer.bias[idxs] = 0
    elif isinstance(layer, nn.Linear) or layer.groups == 1:
        layer.weight[:, idxs] = 0
    else:  # a grouped conv's weight holds in/groups inputs per group
        block, rows = layer.in_channels // layer.groups, layer.out_channels // layer.groups
        for i in idxs:
            g, pos = divmod(i, block)
            layer.weight[g * rows:(g + 1) * rows, pos] = 0


@pytest.mark.parametrize("family", sorted(set(FACTORIES) - {"convnext"}))  # LayerNorm mixes channels
def test_removing_silenced_channels_leaves_the_outputs_unchanged(family):
    """The pruned weights are the right ones: a unit whose every coupled parameter is zero
    contributes nothing, so removing it must not change the output (one unit per group)."""
    model = build(family)
    probe = torch.randn(2, *SHAPES[family])
    surgeon = Surgeon(model, example(family))
    dropped = 0
    for group in surgeon.groups():
        if group.blocked or len(group.units) < 2:
            continue
        unit = group.units[-1]
        fn = tp.prune_linear_out_channels if isinstance(group.module, nn.Linear) else tp.prune_conv_out_channels
        silence(surgeon.graph, surgeon.graph.get_pruning_group(group.module, fn, unit))
        with torch.no_grad():
            before = model(probe)
        dropped += surgeon.drop(group, [len(group.units) - 1])
        with torch.no_grad():
            assert torch.allclose(model(probe), before, atol=1e-5), group.root
    assert dropped > 0 and surgeon.notes == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ignored_layers_are_untouched(family):
    model = build(family)
    first = prunable_layers(model)[0][0]
    weight = dict(model.named_modules())[first].weight.detach().clone()
    before = params(model)
    prune(model, PruneConfig(ratio=0.5, ignored=(first,)), example(family))
    assert torch.equal(dict(model.named_modules())[first].weight, weight)
    assert first not in channel_spec(model) or channel_spec(model)[first] == weight.shape[0]
    assert params(model) < 0.8 * before
    assert model(torch.randn(1, *RGB)).shape == (1, 10)


def test_an_ignored_block_keeps_every_layer_in_it():
    model = build("mobilenetv3")
    block = {n: m.weight.shape for n, m in model.named_modules()
             if n.startswith("blocks.3.") and hasattr(m, "weight")}
    prune(model, PruneConfig(ratio=0.5, ignored="blocks.3"), example("mobilenetv3"))
    assert {n: m.weight.shape for n, m in model.named_modules() if n in block} == block


def test_unknown_ignored_layer_is_a_clear_error():
    with pytest.raises(BadInputError, match="ignored layer 'nope' is not in the model"):
        prune(build("ghostnet"), PruneConfig(ratio=0.5, ignored=("nope",)), example("ghostnet"))


class Quirks(nn.Module):
    """What user code does that cannot be pruned as is."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.ghost_odd = GhostModule(16, 15)  # its out[:, :15] slice keeps a stale count
        self.a, self.b = _conv_bn(15, 16, 1), _conv_bn(15, 16, 1)
        self.grouped = _conv_bn(32, 32, 3, groups=4)  # reads a concat of a and b
        self.fixed = _conv_bn(32, 16, 1)
        self.register_buffer("scale", torch.ones(1, 16, 1, 1))  # a channel count baked in
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ghost_odd(self.stem(x))
        x = self.grouped(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(torch.flatten(self.pool(self.fixed(x) * self.scale), 1))


def test_unprunable_layers_are_skipped_with_notes(caplog):
    torch.manual_seed(0)
    model = Quirks().eval()
    notes = []
    with caplog.at_level(logging.WARNING, logger="edgeprune.pruning"):
        spec = prune(model, PruneConfig(ratio=0.5), torch.zeros(1, *RGB), notes=notes)
    assert model(torch.randn(1, *RGB)).shape == (1, 10)
    assert spec["stem.0"] == 8 and spec["grouped.0"] == 16  # the rest still pruned
    text = "\n".join(notes)
    assert "fixed.0: skipped, pruning it breaks the model" in text and "--ignore fixed.0" in text
    assert "ghost_odd.primary_conv.0: skipped" in text
    assert "a.0: skipped, grouped conv grouped.0 (groups=4)" in text
    assert [r.getMessage() for r in caplog.records if r.name == "edgeprune.pruning"] == notes
    fresh = Quirks().eval()
    prune_to_spec(fresh, spec, torch.zeros(1, *RGB))
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_ghostnet_stem_prunes_to_four_channels():
    """The cheap op ties channel j of conv_stem to channel j + half: both go together."""
    model = build("ghostnet")
    notes = []
    spec = prune(model, PruneConfig(spec={"conv_stem": 4}), example("ghostnet"), notes=notes)
    assert spec["conv_stem"] == 4 and spec["blocks.0.ghost2.primary_conv.0"] == 2 and notes == []
    assert model(torch.randn(1, *RGB)).shape == (1, 10)


def test_spec_counts_that_split_a_group_round_up_with_a_note():
    model = build("resnext")
    notes = []
    spec = prune(model, PruneConfig(spec={"blocks.2.conv1.0": 67}), example("resnext"), notes=notes)
    assert spec["blocks.2.conv1.0"] == 68
    assert notes and "blocks.2.conv1.0: kept 68 channels (asked 67)" in notes[0] and "sets of 4" in notes[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_analysis_counts_params_and_macs_of_every_family(family):
    """MACs agree with torch's own FLOP counter (grouped convs, channels-last linears)."""
    for pruned in (False, True):
        model = build(family)
        if pruned:
            prune(model, PruneConfig(ratio=0.5), example(family))
        report = analyze(model, RGB)
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *RGB))
        assert report.params == params(model)
        assert report.macs == counter.get_total_flops() // 2


def test_families_are_compact_and_accept_larger_inputs():
    for name, factory in FAMILIES.items():
        model = factory().eval()
        assert params(model) < 300_000, name
        assert model(torch.zeros(1, 3, 64, 48)).shape == (1, 10), name


@pytest.mark.parametrize("name", ["activation", "taylor"])
def test_data_criteria_stay_aligned_with_pruned_layers(name):
    """DenseNet's BatchNorms after a concat hold the channels of several groups: after one
    group goes, the statistics of the next one must still index the right channels."""
    from edgeprune.pruning import create_importance

    model = build("densenet")
    criterion = create_importance(name)
    criterion.prepare(model, calibration("densenet"))
    surgeon = Surgeon(model, example("densenet"), criterion=criterion)
    removed = sum(surgeon.drop(group, [0, 1]) for group in surgeon.groups())
    assert removed > 0
    for layer, stats in criterion.stats.items():
        channels = layer.num_features if isinstance(layer, nn.BatchNorm2d) else layer.weight.shape[0]
        assert len(stats) == channels


@pytest.mark.parametrize("family", ["ghostnet", "resnext", "densenet", "inception"])
def test_units_hold_everything_torch_pruning_couples(family):
    """Pruning channel i makes torch-pruning prune its whole closure on the root layer; a
    unit must contain that closure (it adds the positions of grouped convs on top)."""
    model = build(family)
    surgeon = Surgeon(model, example(family))
    for group in surgeon.groups():
        fn = tp.prune_linear_out_channels if isinstance(group.module, nn.Linear) else tp.prune_conv_out_channels
        for unit in group.units[:3]:
            closure = set(surgeon.graph.get_pruning_group(group.module, fn, [unit[0]])[0].idxs)
            assert closure <= set(unit), group.root
    ghost = surgeon.group("conv_stem") if family == "ghostnet" else None
    if ghost is not None:  # channel j and j + 8 of the stem feed one primary/cheap pair
        assert ghost.units[0] == [0, 8]
