"""The truth's own noise behind bench_search's Spearman: the same 20 specs (argv[1], a
bench_search results file) fine-tuned again with three more seeds (1 epoch on 2,000 images),
and the estimate ranked against the mean truth. Writes bench/results/search-truth-seeds.json.

    python bench/search_truth_seeds.py bench/results/search.json   (needs /tmp/bs/resnet20.pt: bench_search --workdir /tmp/bs)
"""
import json, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import torch
torch.set_num_threads(2)
import numpy as np
from pathlib import Path
from bench.bench_search import make_evaluator, spearman, heldout
from edgeprune.models import load_model
from edgeprune.search import EvaluatorConfig, Proposal
from edgeprune.targets import load_target
from edgeprune.pruning.recovery import RecoveryConfig, recover
from edgeprune.train import evaluate
d = json.load(open(sys.argv[1])); rows = d["per_spec"]["resnet20"]
ckpt = load_model("/tmp/bs/resnet20.pt")
ev = make_evaluator(ckpt, load_target("x86-ort"), Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/edgeprune-truth-seeds"), EvaluatorConfig())
truths = {0: [heldout(r) for r in rows]}
for s in (1000, 2000, 3000):
    t = []
    for i, r in enumerate(rows, 1):
        m = ev.apply(Proposal(r["spec"], "measure"))
        recover(m, ckpt.model, ev.data.train.subset(2000), ckpt.metadata, RecoveryConfig(1, None, 0.5, s + i, False), ckpt.arch)
        t.append((evaluate(m, ev.data.val)["top1"] + evaluate(m, ev.data.test)["top1"]) / 2)
    truths[s] = t
    est = [r["estimate_accuracy"] for r in rows]
    avg = np.mean([truths[k] for k in truths], axis=0).tolist()
    print(len(truths), "seeds: est vs avg", round(spearman(est, avg), 3), "est vs this seed", round(spearman(est, t), 3), flush=True)
json.dump({"truths": {str(k): v for k, v in truths.items()}, "estimate": [r["estimate_accuracy"] for r in rows]}, open(Path(__file__).resolve().parent / "results" / "search-truth-seeds.json", "w"))
