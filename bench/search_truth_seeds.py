"""The truth's own noise behind bench_search's Spearman: the ResNet-20 specs of a bench_search
results file fine-tuned again with more seeds (the same recovery settings, read from the file),
and the estimate ranked against each seed's truth and against their mean. Needs the checkpoint
bench_search kept in its --workdir. Writes bench/results/search-truth-seeds.json.

    python bench/search_truth_seeds.py [bench/results/search.json] [--seeds 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import write_json  # noqa: E402
from bench.bench_search import heldout, make_evaluator, recovered, spearman  # noqa: E402
from edgeprune.models import load_model  # noqa: E402
from edgeprune.search import EvaluatorConfig  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402


def main() -> None:
    args = _args()
    results = json.loads(Path(args.results).read_text())
    torch.set_num_threads(results["settings"]["threads"])
    rows = results["per_spec"]["resnet20"]
    ckpt = load_model(Path(results["settings"]["workdir"]) / "resnet20.pt")
    cfg = EvaluatorConfig(**{**results["evaluator"], "ignored": tuple(results["evaluator"]["ignored"])})
    ev = make_evaluator(ckpt, load_target(results["settings"]["target"]), Path(tempfile.mkdtemp()), cfg)
    estimate = [r["estimate_accuracy"] for r in rows]
    truths = {"0": [heldout(r) for r in rows]}  # the results file's own fine-tune
    for k in range(1, args.seeds + 1):
        truths[str(1000 * k)] = [sum(recovered(ev, r["spec"], 1000 * k + i)) / 2 for i, r in enumerate(rows, 1)]
        mean = np.mean(list(truths.values()), axis=0).tolist()
        print(f"{len(truths)} seeds: estimate vs their mean {spearman(estimate, mean):.3f}, vs this seed "
              f"{spearman(estimate, truths[str(1000 * k)]):.3f}, this seed vs the first "
              f"{spearman(truths['0'], truths[str(1000 * k)]):.3f}", flush=True)
    write_json("search-truth-seeds", {"results": args.results, "truths": truths, "estimate": estimate})


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default="bench/results/search.json")
    p.add_argument("--seeds", type=int, default=3, help="fine-tunes per spec beyond the file's own")
    return p.parse_args()


if __name__ == "__main__":
    main()
