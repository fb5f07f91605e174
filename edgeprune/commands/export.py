"""`edgeprune export MODEL --format onnx|tflite [--precision P] [--data D] --out PATH`."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgeprune._io import sha256_file
from edgeprune.commands._common import emit_json, log
from edgeprune.errors import BadInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX or TFLite (fp32, fp16, int8, dynamic)")
    p.add_argument("model", help="checkpoint (.pt) or package.module:factory")
    p.add_argument("--format", choices=("onnx", "tflite"), help="default: from the --out suffix")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8", "dynamic"))
    p.add_argument("--data", help="calibration data for int8 (default: the checkpoint's data set)")
    p.add_argument("--out", required=True, help="artifact path (.onnx or .tflite)")
    p.add_argument("--weights", help="state_dict for a package.module:factory model")
    p.add_argument("--calibration-samples", type=int, default=128)
    p.add_argument("--float-io", action="store_true", help="TFLite int8: keep float32 input/output")
    p.add_argument("--calibration", default="auto", choices=("auto", "minmax", "percentile"),
                   help="ONNX int8 activation ranges (default auto: the one that agrees best with fp32)")
    p.add_argument("--all-int8", action="store_true",
                   help="int8: quantize every layer, also the sensitive ones kept in float by default "
                        "(SE gates and multiplies, hardswish, first and last layer); TFLite then has int8 io")
    p.add_argument("--min-agreement", type=float, default=0.995,
                   help="int8: move the costliest layers to float until top-1 agreement with float on "
                        "held-out samples of --data reaches this (0: off; see edgeprune.export.fallback)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeprune.export import ExportConfig, artifact_precision, export, float_layers

    out = Path(args.out)
    fmt = args.format or _format_of(out)
    if out.suffix.lower() in (".onnx", ".tflite") and out.suffix.lower() != f".{fmt}":
        raise BadInputError(f"--out {out.name} does not match --format {fmt}")
    cfg = ExportConfig(format=fmt, precision=args.precision, calibration_samples=args.calibration_samples,
                       int8_io=not args.float_io, opset=args.opset, calibration=args.calibration,
                       float_sensitive=not args.all_int8, min_agreement=args.min_agreement)
    log(f"exporting {args.model} to {fmt} {args.precision} ...")
    path = export(args.model, cfg, out, data=args.data, weights=args.weights)
    result = {"artifact": str(path), "format": fmt, "precision": artifact_precision(path),
              "model_bytes": path.stat().st_size, "sha256": sha256_file(path), "config": cfg.to_dict(),
              "float_layers": float_layers(path)}
    if args.json:
        emit_json(result)
    else:
        print(f"wrote {path} ({result['precision']}, {result['model_bytes']} bytes)")
        if result["float_layers"]:
            print(f"kept in float: {', '.join(result['float_layers'])}")
    return 0


def _format_of(out: Path) -> str:
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in ("onnx", "tflite"):
        raise BadInputError(f"cannot tell the format of {out.name}: pass --format onnx|tflite")
    return suffix
