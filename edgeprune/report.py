"""The end of a compress job: final artifacts measured and verified on the target, then
result.json, report.md, report.html and pareto.png. Every latency and memory figure in the
reports carries its provenance (source, runtime and version, threads, runs).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgeprune._io import atomic_path, atomic_write_bytes
from edgeprune.analysis import analyze
from edgeprune.models import reload
from edgeprune.policies.budget import comparable_p50
from edgeprune.train import evaluate

Row = Dict[str, Any]


def finish_job(job, rows: List[Row], final: Row, wall_seconds: float) -> Dict[str, Any]:
    """Write the final artifacts and reports; returns the result.json object."""
    from edgeprune.compress import export_for, measure_on_target
    from edgeprune.export import verify

    baseline = rows[0]
    base_model = job.ckpt.model
    shipped_ckpt = reload(job.state_path(final["iteration"]), job.ckpt)
    model = shipped_ckpt.model
    shipped_ckpt.metadata = {**job.ckpt.metadata, "accuracy": evaluate(model, job.test)["top1"]}
    shipped_ckpt.save(job.out / "model.pt")
    artifacts = _export_final(job, model, export_for)
    shipped = artifacts[job.fmt]
    measured = measure_on_target(job, shipped)  # under 0.5x: interleaved with the baseline artifact
    final_row = {**final, **measured, "artifact_bytes": Path(shipped).stat().st_size}
    base_measurement = measured.get("baseline_measurement", baseline["measurement"])
    verifications = {fmt: verify(path, shipped_ckpt, data=job.test, target=job.target.name).to_dict()
                     for fmt, path in artifacts.items() if path}
    policy = job.cfg.policy_obj
    verified = all(v["passed"] for v in verifications.values())
    met, reason = policy.verdict(final_row, baseline, verified)
    result = {
        "policy": policy.name, "budget": job.cfg.budget, "tolerance": policy.guard,
        "met": met, "reason": reason, "guard_passed": policy.good(final, baseline),
        "budget_met": policy.meets_budget(final_row, baseline), "verified": verified,
        "precision": job.cfg.precision, "target": job.target.name,
        "baseline": _summary(job, base_model, baseline, base_measurement),
        "final": _summary(job, model, final, measured["measurement"]),
        "ab": measured.get("ab"), "int8_vs_fp32": baseline.get("fp32_comparison"),
        "artifacts": {k: (str(v) if v else None) for k, v in artifacts.items()},
        "verification": verifications.get(job.fmt), "verifications": verifications,
        "iterations": len(rows) - 1, "final_iteration": final["iteration"],
        "wall_seconds": round(wall_seconds, 1),
    }
    atomic_write_bytes(job.out / "result.json", (json.dumps(result, indent=2) + "\n").encode())
    write_reports(job.out, result, rows, _channels(base_model), _channels(model))
    return result


def _export_final(job, model, export_for) -> Dict[str, Optional[Path]]:
    """model.onnx and model.tflite at the job's precision (TFLite needs the tflite extra)."""
    from edgeprune.errors import MissingDependencyError

    out: Dict[str, Optional[Path]] = {}
    for fmt in ("onnx", "tflite"):
        try:
            out[fmt] = export_for(job, model, job.out / f"model.{fmt}")
        except MissingDependencyError as exc:
            if fmt == job.fmt:
                raise
            job.log(f"skipping model.{fmt}: {exc}")
            out[fmt] = None
    return out


def _summary(job, model, row: Row, measurement: Dict[str, Any]) -> Dict[str, Any]:
    report = analyze(model, job.ckpt.input_shape, job.ckpt.arch)
    return {
        "accuracy": evaluate(model, job.test)["top1"], "val_accuracy": row["accuracy"],
        "params": report.params, "macs": report.macs, "model_bytes": row["artifact_bytes"],
        "measurement": measurement,
    }


def _channels(model) -> Dict[str, int]:
    from edgeprune.pruning import channel_spec
    return channel_spec(model)


def provenance(m: Dict[str, Any]) -> str:
    """`emulated, tflite 2.3.0, 1 thread, 50 runs` — where a number came from."""
    rt = m.get("runtime") or {}
    flags = ", UNSTABLE" if m.get("unstable") else ""
    return (f"{m.get('source')}, {rt.get('name')} {rt.get('version')}, {m.get('threads')} thread(s), "
            f"{m.get('runs')} runs{flags}")


def write_reports(out: Path, result: Dict[str, Any], rows: List[Row], before: Dict[str, int],
                  after: Dict[str, int]) -> None:
    """report.md, report.html and pareto.png in `out`."""
    _pareto_png(out / "pareto.png", rows, result)
    md = _markdown(result, rows, before, after)
    atomic_write_bytes(out / "report.md", md.encode())
    atomic_write_bytes(out / "report.html", _html(md).encode())


def _comparison(result: Dict[str, Any]) -> List[List[str]]:
    b, f = result["baseline"], result["final"]
    bm, fm = b["measurement"], f["measurement"]
    where = provenance(fm) if provenance(bm) == provenance(fm) else f"baseline: {provenance(bm)}; final: {provenance(fm)}"
    rows = [
        ["test accuracy (top-1 %)", f"{b['accuracy']:.2f}", f"{f['accuracy']:.2f}", "evaluated on the host"],
        ["params", f"{b['params']:,}", f"{f['params']:,}", "counted"],
        ["MACs", f"{b['macs']:,}", f"{f['macs']:,}", "counted (proxy)"],
        ["artifact bytes", f"{b['model_bytes']:,}", f"{f['model_bytes']:,}", "file size"],
        ["latency p50 (ms)", f"{bm['latency_ms']['p50']:.3f}", f"{fm['latency_ms']['p50']:.3f}", where],
        ["latency p90 (ms)", f"{bm['latency_ms']['p90']:.3f}", f"{fm['latency_ms']['p90']:.3f}", where],
        ["peak memory (MB)", _mb(bm), _mb(fm), f"{fm.get('memory_method') or 'n/a'}, {fm.get('source')}"],
    ]
    return rows


def _mb(m: Dict[str, Any]) -> str:
    return "n/a" if m.get("peak_memory_mb") is None else f"{m['peak_memory_mb']:.1f}"


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _markdown(result: Dict[str, Any], rows: List[Row], before: Dict[str, int], after: Dict[str, int]) -> str:
    fm = result["final"]["measurement"]
    device = fm.get("device") or {}
    verdict = "MET" if result["met"] else "NOT MET"
    parts = [
        f"# edgeprune compress report: {result['policy']} policy, budget {result['budget'] or 'n/a'} — {verdict}",
        f"**{verdict}**: {result['reason']}.",
        f"Target **{result['target']}** ({'emulated' if fm.get('emulated') else 'device'}): "
        f"host {device.get('hostname')}, CPU {device.get('cpu')}, {device.get('cores')} cores; "
        f"runtime {fm['runtime'].get('name')} {fm['runtime'].get('version')}. Precision {result['precision']}. "
        f"{result['iterations']} candidates in {result['wall_seconds']} s.",
        "## Baseline against final",
        _table(["", "baseline", "final", "provenance"], _comparison(result)),
        _ab_sentence(result),
        "## Verification on the target",
        _table(["artifact", "samples", "top-1 agreement", "max abs diff", "accuracy (fraction)", "passed"],
               [[v["artifact"], v["samples"], f"{v['top1_agreement']:.4f}", f"{v['max_abs_diff']:.4g}",
                 v["accuracy"], v["passed"]] for v in result["verifications"].values()]),
        "## Candidates (accuracy on the validation split; latency measured on the target)",
        "![pareto](pareto.png)",
        _table(["iter", "parent", "threshold", "val acc %", "params", "MACs", "p50 ms", "x baseline", "source",
                "good", "in budget"],
               [[r["iteration"], r["parent"], f"{r['threshold']:.3f}", f"{r['accuracy']:.2f}", f"{r['params']:,}",
                 f"{r['macs']:,}", f"{r['p50_ms']:.3f}", f"{comparable_p50(r, rows[0]) / rows[0]['p50_ms']:.3f}",
                 r["source"], r.get("good"), r.get("met_budget")] for r in rows]),
        "## Channels per layer",
        _table(["layer", "before", "after"], [[k, v, after.get(k, "-")] for k, v in before.items()]),
    ]
    return "\n\n".join(parts) + "\n"


def _ab_sentence(result: Dict[str, Any]) -> str:
    ab = result.get("ab")
    if not ab:
        return "Baseline and final were measured separately, each with the protocol above."
    ratio = result["final"]["measurement"]["latency_ms"]["p50"] / result["baseline"]["measurement"]["latency_ms"]["p50"]
    return (f"Baseline and final were benched interleaved, {ab['rounds']} rounds each (A B, B A, ...), so drift "
            f"on the device falls on both alike: final/baseline p50 {ratio:.3f} pooled, per-round ratios "
            f"{ab['ratio_min']:.3f}-{ab['ratio_max']:.3f}.")


def _html(md: str) -> str:
    """A self-contained HTML page of the markdown report (tables and the plot)."""
    body, table = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                table.append("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>"
                                                for c in line.strip("|").split("|")) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            body.append('<img src="pareto.png" alt="accuracy against latency" width="560">')
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td{border:1px solid #ccc;padding:2px 8px}tr:first-child td{font-weight:bold;background:#eee}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>edgeprune report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def _pareto_png(path: Path, rows: List[Row], result: Dict[str, Any]) -> None:
    """Accuracy against measured p50 for every candidate, the Pareto front and the budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    x = {r["iteration"]: comparable_p50(r, rows[0]) for r in rows}  # interleaved rows: on the baseline's scale
    ax.scatter([x[r["iteration"]] for r in rows], [r["accuracy"] for r in rows],
               c=["tab:green" if r.get("met_budget") else "tab:gray" for r in rows], zorder=3)
    for r in rows:
        ax.annotate(str(r["iteration"]), (x[r["iteration"]], r["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front = _pareto_front(rows, x)
    ax.plot([x[r["iteration"]] for r in front], [r["accuracy"] for r in front], "b--", lw=1, label="Pareto front")
    final = next(r for r in rows if r["iteration"] == result["final_iteration"])
    ax.scatter([x[final["iteration"]]], [final["accuracy"]], marker="*", s=250, c="tab:red", zorder=4, label="final")
    if result["budget"] and str(result["budget"]).endswith(("x", "ms")):
        limit = (rows[0]["p50_ms"] * float(result["budget"][:-1]) if result["budget"].endswith("x")
                 else float(result["budget"][:-2]))
        ax.axvline(limit, color="tab:red", lw=1, label=f"budget {result['budget']}")
    src = rows[0]["measurement"]
    ax.set_xlabel(f"p50 latency, ms ({src['source']} on {result['target']}, {src['runtime'].get('name')})")
    ax.set_ylabel("validation top-1, %")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _pareto_front(rows: List[Row], x: Dict[int, float]) -> List[Row]:
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: x[r["iteration"]]):
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front
