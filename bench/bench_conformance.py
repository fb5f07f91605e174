"""Conformance of user CNN families (issue 9): for each family at 3x32x32 on the built-in
MNIST, quick train, prune 0.5 with two criteria (with recovery), ONNX/TFLite at fp32/int8,
verification against PyTorch and a profile on x86-ort. Prints the family x step table and
writes bench/results/conformance.json.

    python bench/bench_conformance.py [--families a,b] [--epochs 1] [--samples 6000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, print_table, write_json  # noqa: E402
from tests.conformance.pipeline import ARTIFACTS, CRITERIA, family_refs, run_family  # noqa: E402


def main() -> int:
    args = _args()
    import torch

    torch.set_num_threads(2)
    names = args.families.split(",") if args.families else sorted(family_refs())
    records, start = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"... {name}", file=sys.stderr, flush=True)
            records.append(run_family(name, Path(tmp) / name, epochs=args.epochs, samples=args.samples))
    for r in records:  # tracebacks stay in the JSON for debugging, not in the table
        for step in r["steps"].values():
            step.pop("traceback", None)
    print_table(_header(), [_row(r) for r in records])
    failed = [f"{r['family']}:{k}" for r in records for k, v in r["steps"].items() if not v["ok"]]
    low = [f"{r['family']}:{f}-int8" for r in records for f, p in ARTIFACTS
           if p == "int8" and r["steps"].get(f"{f}-int8", {}).get("top1_agreement", 0) < 0.98]
    print(f"\nfailed steps: {', '.join(failed) or 'none'}; int8 agreement < 0.98: {', '.join(low) or 'none'}")
    write_json("conformance", {"machine": machine(), "epochs": args.epochs, "samples": args.samples,
                               "wall_seconds": round(time.time() - start, 1), "records": records,
                               "failed": failed, "int8_below_0.98": low})
    return 1 if failed or low else 0


def _header():
    return (["family", "train acc %"] + [f"prune {c}: acc % / params kept" for c in CRITERIA]
            + [f"{f} {p} agreement" for f, p in ARTIFACTS] + ["float layers (ONNX int8)", "p50 fp32 / int8 ms (x86-ort)"])


def _row(r):
    s = r["steps"]

    def cell(key, fn):
        step = s.get(key)
        if step is None:
            return "-"
        return fn(step) if step["ok"] else f"FAIL: {step['error'][:60]}"

    row = [r["family"], cell("train", lambda t: f"{t['accuracy']:.1f}")]
    row += [cell(f"prune-{c}", lambda t: f"{t['accuracy']:.1f} / {t['params_kept']:.2f}") for c in CRITERIA]
    row += [cell(f"{f}-{p}", lambda t: f"{t['top1_agreement']:.3f}" + ("" if t["passed"] else " FAILED"))
            for f, p in ARTIFACTS]
    row.append(cell("onnx-int8", lambda t: str(len(t["float_layers"]))))
    row.append(cell("profile", lambda t: f"{t['fp32']['p50_ms']:.3f} / {t['int8']['p50_ms']:.3f} "
                                          f"[{t['fp32']['source']}, {t['fp32']['runtime']['name']} "
                                          f"{t['fp32']['runtime']['version']}, {t['fp32']['threads']} thr, "
                                          f"{t['fp32']['runs']} runs]"))
    return row


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", help="comma-separated subset (default: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--samples", type=int, default=6000)
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
