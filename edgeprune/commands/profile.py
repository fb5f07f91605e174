"""`edgeprune profile (ARTIFACT|MODEL) --target NAME`: measure latency and memory on a target."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgeprune.commands._common import emit_json, log
from edgeprune.errors import BadInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help="measure an artifact (.onnx/.tflite) or model (.pt) on a target")
    p.add_argument("model", help="ARTIFACT (.onnx, .tflite) or MODEL (.pt checkpoint)")
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
        artifact = _artifact(Path(args.model), target, Path(tmp))
        log(f"profiling {artifact.name} on {target.name} ({target.source})")
        m = target.measure(artifact, runs=args.runs, warmup=args.warmup, threads=args.threads,
                           min_seconds=args.min_seconds, use_cache=not args.no_cache)
    emit_json(m.to_dict()) if args.json else print(m.summary())
    return 0


def _artifact(path: Path, target, tmp: Path) -> Path:
    """The artifact itself, or a .pt model exported for the target's runtime."""
    if not path.exists():
        raise BadInputError(f"file not found: {path}")
    if path.suffix.lower() in (".onnx", ".tflite"):
        return path
    if path.suffix.lower() != ".pt":
        raise BadInputError(f"{path.name}: expected an artifact (.onnx, .tflite) or a model (.pt)")
    try:
        from edgeprune.export import export_artifact
    except ImportError:
        raise BadInputError("profiling a .pt model needs edgeprune.export (not available in this build); "
                            "export it first with `edgeprune export` and profile the artifact") from None
    fmt = "tflite" if target.runtime == "tflite" else "onnx"
    return Path(export_artifact(path, fmt, tmp / f"{path.stem}.{fmt}"))
