"""`edgeprune profile (ARTIFACT|MODEL) --target NAME`: measure latency and memory on a target.

A MODEL (.pt checkpoint or package.module:factory) is first exported with edgeprune.export
into a temporary directory: ONNX for onnxruntime targets, TFLite for tflite targets. Torch and
the exporters are imported only then, so profiling an artifact stays light.

int8 is measured against fp32 on the same target whenever the fp32 model is at hand (a MODEL
at --precision int8, or an int8 ARTIFACT with --reference MODEL): a warning on stderr when
int8 is slower, and `int8_slower_than_fp32` / `int8_vs_fp32` in the JSON (null otherwise).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional, Tuple

from edgeprune.commands._common import add_target_args, cli_target, emit_json, log
from edgeprune.errors import BadInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help="measure an artifact (.onnx/.tflite) or model (.pt) on a target")
    p.add_argument("model", help="ARTIFACT (.onnx, .tflite) or MODEL (.pt checkpoint or package.module:factory)")
    p.add_argument("--weights", help="weights for a package.module:factory MODEL")
    p.add_argument("--precision", default="fp32", help="export precision for a MODEL: fp32, fp16, int8, dynamic")
    p.add_argument("--data", help="calibration data for --precision int8 (default: the checkpoint's)")
    p.add_argument("--reference", help="the MODEL an int8 ARTIFACT came from: its fp32 export is measured too")
    add_target_args(p)
    p.add_argument("--runs", type=int, help="counted runs (default: the profile's, at least 1 s)")
    p.add_argument("--warmup", type=int, help="warm-up runs (default: the profile's, at least 0.5 s)")
    p.add_argument("--threads", type=int, help="threads (default: the profile's)")
    p.add_argument("--min-seconds", type=float, help="minimum counted time in seconds (default 1)")
    p.add_argument("--no-cache", action="store_true", help="measure again even if a cached result exists")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for opt in ("runs", "warmup", "threads"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            raise BadInputError(f"--{opt} must be at least 1")
    target = cli_target(args, "profile")
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        artifact, fp32 = _artifacts(args, target, Path(tmp))
        m = _measure(args, target, artifact)
        fp32_m = _measure(args, target, fp32) if fp32 is not None else None
    result = {**m.to_dict(), **_against_fp32(m, fp32_m, target.name)}
    emit_json(result) if args.json else print(m.summary())
    return 0


def _measure(args: argparse.Namespace, target, artifact: Path):
    log(f"profiling {artifact.name} on {target.name} ({target.source})")
    return target.measure(artifact, runs=args.runs, warmup=args.warmup, threads=args.threads,
                          min_seconds=args.min_seconds, use_cache=not args.no_cache)


def _against_fp32(m, fp32_m, target: str) -> dict:
    """The int8-vs-fp32 fields (null without an fp32 measurement); warns when int8 is slower."""
    if fp32_m is None:
        return {"int8_slower_than_fp32": None, "int8_vs_fp32": None}
    from edgeprune.export.speed import int8_slowdown, int8_slowdown_note

    note = int8_slowdown_note(m.p50_ms, fp32_m.p50_ms, target)
    if note:
        log(note)
    cmp = int8_slowdown(m.p50_ms, fp32_m.p50_ms)
    return {"int8_slower_than_fp32": cmp["slower"], "int8_vs_fp32": cmp}


def _artifacts(args: argparse.Namespace, target, tmp: Path) -> Tuple[Path, Optional[Path]]:
    """The artifact to measure and, for int8, the fp32 artifact to measure it against."""
    path = Path(args.model)
    if path.suffix.lower() in (".onnx", ".tflite"):
        if not path.is_file():
            raise BadInputError(f"file not found: {path}")
        return path, _reference_fp32(args, path, tmp) if args.reference else None
    is_factory = ":" in args.model and not path.exists()
    if not is_factory and path.suffix.lower() != ".pt":
        raise BadInputError(f"{path.name}: expected an artifact (.onnx, .tflite) or a model (.pt or module:factory)")
    if not is_factory and not path.is_file():
        raise BadInputError(f"file not found: {path}")
    return _export(args, target, tmp)


def _reference_fp32(args: argparse.Namespace, artifact: Path, tmp: Path) -> Optional[Path]:
    """The --reference MODEL exported at fp32 like `artifact`, when `artifact` is int8."""
    from edgeprune.export import ExportConfig, artifact_precision, export

    if artifact_precision(artifact) not in ("int8", "mixed"):
        return None
    log(f"exporting {args.reference} to fp32 to compare with {artifact.name}")
    cfg = ExportConfig(format=artifact.suffix[1:].lower(), precision="fp32")
    return Path(export(args.reference, cfg, tmp / f"fp32{artifact.suffix.lower()}", weights=args.weights))


def _export(args: argparse.Namespace, target, tmp: Path) -> Tuple[Path, Optional[Path]]:
    """Export the MODEL to ONNX (onnxruntime targets) or TFLite (tflite targets); at int8 also
    to fp32, from the same conversion, to measure int8 against."""
    from edgeprune.export import ExportConfig, export_many
    fmt = "tflite" if target.runtime == "tflite" else "onnx"
    if args.precision not in target.precisions:
        log(f"note: {target.name} lists precisions {target.precisions}; exporting {args.precision} anyway")
    name = Path(args.model.split(":")[-1]).stem or "model"
    jobs = {tmp / f"{name}.{fmt}": ExportConfig(format=fmt, precision=args.precision)}
    if args.precision == "int8":
        (tmp / "fp32").mkdir()
        jobs[tmp / "fp32" / f"{name}.{fmt}"] = ExportConfig(format=fmt, precision="fp32")
    log(f"exporting {args.model} to {fmt} ({args.precision}) for {target.name}")
    paths = [Path(p) for p in export_many(args.model, jobs, data=args.data, weights=args.weights)]
    return paths[0], paths[1] if len(paths) > 1 else None
