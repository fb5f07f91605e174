"""Candidates round-trip through one JSON line; a history survives a torn last line."""
import json

from edgeprune.search import Candidate, History, Proposal


def sample(i=1, fidelity="measure"):
    p = Proposal({"conv1": 8, "layer1.0.conv1": 4}, fidelity, parent=None, importance="l1",
                 precision={"conv1": "int8"}, extra={"round": 0})
    return Candidate(i, p, "random", accuracy=91.5, params=1234, macs=5678, artifact_bytes=4096, p50_ms=0.5,
                     source="device", measurement={"runtime": {"name": "onnxruntime"}}, ab={"rounds": 4},
                     confirmation_ratios=[0.4, 0.45], good=True, met_budget=True, extra={"notes": ["x"]})


def test_a_candidate_round_trips_through_one_json_line():
    c = sample()
    line = c.to_json()
    assert "\n" not in line and json.loads(line)["fidelity"] == "measure"
    back = Candidate.from_json(line)
    assert back == c and back.proposal.precision == {"conv1": "int8"} and back.parent is None


def test_history_appends_reads_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "history.jsonl"
    h = History(path)
    for i in range(3):
        h.append(sample(i))
    with open(path, "a") as fh:
        fh.write(sample(3).to_json()[:40])  # killed mid-write
    read = History.read(path)
    assert [c.iteration for c in read] == [0, 1, 2]
    read.rewrite()
    assert len(path.read_text().splitlines()) == 3 and path.read_text().endswith("\n")


def test_history_replay_stops_at_a_candidate_it_cannot_keep(tmp_path):
    path = tmp_path / "history.jsonl"
    h = History(path)
    for i, fidelity in enumerate(["measure", "estimate", "measure", "estimate"]):
        h.append(sample(i, fidelity))
    read = History.read(path, keep=lambda c: c.iteration != 2)  # e.g. its state file is gone
    assert [c.iteration for c in read] == [0, 1]
    assert [c.iteration for c in h.at("estimate")] == [1, 3] and [c.iteration for c in h.measured()] == [2]
