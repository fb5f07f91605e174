"""`edgeprune analyze`: params, MACs, bytes, activation memory and the per-layer table."""
from __future__ import annotations

from edgeprune.commands._common import emit_json
from edgeprune.commands._model_args import add_model_args


def register(sub) -> None:
    p = sub.add_parser("analyze", help="params, MACs, size and a per-layer table (static estimates)")
    add_model_args(p, data_help="data set whose image size a module:factory model takes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeprune.analysis import analyze
    from edgeprune.commands._model_args import load_cli_model

    ckpt = load_cli_model(args)
    report = analyze(ckpt.model, ckpt.input_shape, ckpt.arch)
    if args.json:
        emit_json(report.to_dict())
        return 0
    print(f"{report.arch}: {report.params:,} params, {report.macs / 1e6:.2f} M MACs "
          f"(input {report.input_shape}; static estimates, source: proxy)")
    print("model bytes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in report.model_bytes.items()))
    print(f"peak activation estimate (fp32, batch 1): {report.activation_bytes / 1e3:.1f} kB")
    print(f"{'layer':<32} {'type':<7} {'in':>5} {'out':>5} {'params':>10} {'MACs':>12}")
    for l in report.layers:
        print(f"{l.name:<32} {l.type:<7} {l.in_channels:>5} {l.out_channels:>5} {l.params:>10,} {l.macs:>12,}")
    return 0
