"""`edgeprune verify ARTIFACT --reference MODEL [--target NAME] [--data D] [--samples N] [--json]`.

Exit 0 when the artifact agrees with the reference, 1 when it does not, 2 on bad input,
3 when the target fails.
"""
from __future__ import annotations

import argparse

from edgeprune.commands._common import emit_json, log


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verify", help="compare an artifact with its PyTorch reference")
    p.add_argument("artifact", help=".onnx or .tflite file")
    p.add_argument("--reference", required=True, help="checkpoint (.pt) or package.module:factory")
    p.add_argument("--weights", help="state_dict for a package.module:factory reference")
    p.add_argument("--target", help="run the artifact on this target (default: the host)")
    p.add_argument("--data", help="data set (default: the reference checkpoint's)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-agreement", type=float,
                   help="top-1 agreement needed to pass (default per precision: fp32 0.999, "
                        "fp16 0.995, int8 0.98)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeprune.export import DEFAULT_TOP1_AGREEMENT, verify

    thresholds = None
    if args.min_agreement is not None:
        thresholds = {p: args.min_agreement for p in DEFAULT_TOP1_AGREEMENT}
    log(f"verifying {args.artifact} on {args.target or 'the host'} ...")
    result = verify(args.artifact, args.reference, args.data, target=args.target,
                    samples=args.samples, thresholds=thresholds, threads=args.threads,
                    weights=args.weights)
    if args.json:
        emit_json(result.to_dict())
    else:
        print(_summary(result))
    return 0 if result.passed else 1


def _summary(r) -> str:
    acc = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    verdict = "PASSED" if r.passed else "FAILED"
    return (f"{verdict}: {r.artifact} ({r.precision}) on {r.target or 'host'}, {r.samples} samples: "
            f"top-1 agreement {100 * r.top1_agreement:.2f}% (need {100 * r.threshold:.1f}%), "
            f"max abs diff {r.max_abs_diff:.3g}, SQNR {r.sqnr_db:.1f} dB, "
            f"accuracy {acc(r.accuracy)} vs reference {acc(r.reference_accuracy)}"
            + (f"; {len(r.float_layers)} layers in float" if r.float_layers else ""))
