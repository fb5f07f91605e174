"""Renders a compress result and its history: report.md, report.html and pareto.png. Every
latency and memory figure carries its provenance (source, runtime and version, threads, runs).
It renders only: the job (edgeprune.compress) measures, decides and calls it.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgeprune._io import atomic_path, atomic_write_bytes
from edgeprune.search.candidate import Candidate


def provenance(m: Dict[str, Any]) -> str:
    """`emulated, tflite 2.3.0, 1 thread, 50 runs` — where a number came from."""
    rt = m.get("runtime") or {}
    flags = ", UNSTABLE" if m.get("unstable") else ""
    return (f"{m.get('source')}, {rt.get('name')} {rt.get('version')}, {m.get('threads')} thread(s), "
            f"{m.get('runs')} runs{flags}")


def write_reports(out: Path, result: Dict[str, Any], candidates: List[Candidate], before: Dict[str, int],
                  after: Dict[str, int]) -> None:
    """report.md, report.html and pareto.png in `out`; the plot and the table show the
    candidates measured on the target (estimates are counted, and kept in history.jsonl)."""
    rows = [c for c in candidates if c.iteration == 0 or c.fidelity != "estimate"]
    _pareto_png(out / "pareto.png", [c for c in rows if c.accuracy is not None], result)
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


def _markdown(result: Dict[str, Any], rows: List[Candidate], before: Dict[str, int], after: Dict[str, int]) -> str:
    fm = result["final"]["measurement"]
    device = fm.get("device") or {}
    verdict = "MET" if result["met"] else "NOT MET"
    parts = [
        f"# edgeprune compress report: {result['policy']} policy, budget {result['budget'] or 'n/a'} — {verdict}",
        f"**{verdict}**: {result['reason']}.",
        f"Target **{result['target']}** ({'emulated' if fm.get('emulated') else 'device'}): "
        f"host {device.get('hostname')}, CPU {device.get('cpu')}, {device.get('cores')} cores; "
        f"runtime {fm['runtime'].get('name')} {fm['runtime'].get('version')}. Precision {result['precision']}. "
        f"Method {result.get('method', 'adaptive')}: {result['iterations']} candidates in {result['wall_seconds']} s"
        f"{_search_sentence(result)}.",
        "## Baseline against final",
        _table(["", "baseline", "final", "provenance"], _comparison(result)),
        _ab_sentence(result),
        "## Verification on the target",
        _table(["artifact", "samples", "top-1 agreement", "max abs diff", "accuracy (fraction)", "passed"],
               [[v["artifact"], v["samples"], f"{v['top1_agreement']:.4f}", f"{v['max_abs_diff']:.4g}",
                 v["accuracy"], v["passed"]] for v in result["verifications"].values()]),
        "## Candidates measured on the target (accuracy on the validation split)",
        "![pareto](pareto.png)",
        _table(["iter", "fidelity", "parent", "val acc %", "params", "MACs", "p50 ms", "x baseline", "source",
                "good", "in budget"], [_candidate_row(c, rows[0]) for c in rows]),
        "## Channels per layer",
        _table(["layer", "before", "after"], [[k, v, after.get(k, "-")] for k, v in before.items()]),
    ]
    return "\n\n".join(parts) + "\n"


def _candidate_row(c: Candidate, baseline: Candidate) -> List[Any]:
    acc = "untrained" if c.accuracy is None else f"{c.accuracy:.2f}"
    p50 = c.comparable_p50(baseline)
    ratio = "-" if p50 is None or not baseline.p50_ms else f"{p50 / baseline.p50_ms:.3f}"
    return [c.iteration, c.fidelity, c.parent, acc, f"{c.params:,}", f"{c.macs:,}",
            "-" if c.p50_ms is None else f"{c.p50_ms:.3f}", ratio, c.source, c.good, c.met_budget]


def _search_sentence(result: Dict[str, Any]) -> str:
    s = result.get("search") or {}
    if not s:
        return ""
    err = s.get("predictor_error")
    pred = (f"; the FLOPs proxy was within 10% of the measurement for {err['within_10pct']:.0%} of "
            f"{err['compared']} candidate(s)") if err else ""
    return f" ({s['estimates']} estimates without fine-tuning, {s['measurements']} measured on the target{pred})"


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


def _pareto_png(path: Path, rows: List[Candidate], result: Dict[str, Any]) -> None:
    """Accuracy against measured p50 for every candidate, the Pareto front and the budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    x = {r.iteration: r.comparable_p50(rows[0]) for r in rows}  # interleaved: on the baseline's scale
    ax.scatter([x[r.iteration] for r in rows], [r.accuracy for r in rows],
               c=["tab:green" if r.met_budget else "tab:gray" for r in rows], zorder=3)
    for r in rows:
        ax.annotate(str(r.iteration), (x[r.iteration], r.accuracy), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front = _pareto_front(rows, x)
    ax.plot([x[r.iteration] for r in front], [r.accuracy for r in front], "b--", lw=1, label="Pareto front")
    final = next(r for r in rows if r.iteration == result["final_iteration"])
    ax.scatter([x[final.iteration]], [final.accuracy], marker="*", s=250, c="tab:red", zorder=4, label="final")
    if result["budget"] and str(result["budget"]).endswith(("x", "ms")):
        limit = (rows[0].p50_ms * float(result["budget"][:-1]) if result["budget"].endswith("x")
                 else float(result["budget"][:-2]))
        ax.axvline(limit, color="tab:red", lw=1, label=f"budget {result['budget']}")
    src = rows[0].measurement
    ax.set_xlabel(f"p50 latency, ms ({src['source']} on {result['target']}, {src['runtime'].get('name')})")
    ax.set_ylabel("validation top-1, %")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _pareto_front(rows: List[Candidate], x: Dict[int, float]) -> List[Candidate]:
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: x[r.iteration]):
        if r.accuracy > best:
            front.append(r)
            best = r.accuracy
    return front
