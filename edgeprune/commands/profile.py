"""`edgeprune profile (ARTIFACT|MODEL) --target NAME`: measure latency and memory on a target.

A MODEL (.pt checkpoint or package.module:factory) is first exported with edgeprune.export
into a temporary directory: ONNX for onnxruntime targets, TFLite for tflite targets. Torch and
the exporters are imported only then, so profiling an artifact stays light.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgeprune.commands._common import emit_json, log
from edgeprune.errors import BadInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help="measure an artifact (.onnx/.tflite) or model (.pt) on a target")
    p.add_argument("model", help="ARTIFACT (.onnx, .tflite) or MODEL (.pt checkpoint or package.module:factory)")
    p.add_argument("--weights", help="weights for a package.module:factory MODEL")
    p.add_argument("--precision", default="fp32", help="export precision for a MODEL: fp32, fp16, int8, dynamic")
    p.add_argument("--data", help="calibration data for --precision int8 (default: the checkpoint's)")
    p.add_argument("--target", help="target name (see `edgeprune targets list`)")
    p.add_argument("--profile", help="hardware profile YAML file (instead of --target)")
    p.add_argument("--runs", type=int, help="counted runs (default: the profile's, at least 1 s)")
    p.add_argument("--warmup", type=int, help="warm-up runs (default: the profile's, at least 0.5 s)")
    p.add_argument("--threads", type=int, help="threads (default: the profile's)")
    p.add_argument("--min-seconds", type=float, help="minimum counted time in seconds (default 1)")
    p.add_argument("--no-cache", action="store_true", help="measure again even if a cached result exists")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeprune.targets import load_target
    if not (args.target or args.profile):
        raise BadInputError("profile needs --target NAME or --profile FILE")
    for opt in ("runs", "warmup", "threads"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            raise BadInputError(f"--{opt} must be at least 1")
    target = load_target(args.profile or args.target)
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        artifact = _artifact(args, target, Path(tmp))
        log(f"profiling {artifact.name} on {target.name} ({target.source})")
        m = target.measure(artifact, runs=args.runs, warmup=args.warmup, threads=args.threads,
                           min_seconds=args.min_seconds, use_cache=not args.no_cache)
    emit_json(m.to_dict()) if args.json else print(m.summary())
    return 0


def _artifact(args: argparse.Namespace, target, tmp: Path) -> Path:
    """The artifact itself, or the MODEL exported for the target's runtime into `tmp`."""
    path = Path(args.model)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".tflite"):
        if not path.is_file():
            raise BadInputError(f"file not found: {path}")
        return path
    is_factory = ":" in args.model and not path.exists()
    if not is_factory and suffix != ".pt":
        raise BadInputError(f"{path.name}: expected an artifact (.onnx, .tflite) or a model (.pt or module:factory)")
    if not is_factory and not path.is_file():
        raise BadInputError(f"file not found: {path}")
    return _export(args, target, tmp)


def _export(args: argparse.Namespace, target, tmp: Path) -> Path:
    """Export the MODEL to ONNX (onnxruntime targets) or TFLite (tflite targets)."""
    from edgeprune.export import ExportConfig, export
    fmt = "tflite" if target.runtime == "tflite" else "onnx"
    if args.precision not in target.precisions:
        log(f"note: {target.name} lists precisions {target.precisions}; exporting {args.precision} anyway")
    name = Path(args.model.split(":")[-1]).stem or "model"
    out = tmp / f"{name}.{fmt}"
    log(f"exporting {args.model} to {fmt} ({args.precision}) for {target.name}")
    return Path(export(args.model, ExportConfig(format=fmt, precision=args.precision), out,
                       data=args.data, weights=args.weights))
