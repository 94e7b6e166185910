"""Turning what the workers measured into a report: per-operation throughput, latency
percentiles and errors by status code, a time series, plain text for the terminal, JSON for
comparisons between runs, and PNG plots (latency over time, throughput against latency)."""

import json
import math
from collections import Counter
from pathlib import Path

from .driver import PhaseResult
from .histogram import Histogram
from .workload import OPERATIONS

PERCENTILES = (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9))


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1e3, 4)


def latency(h: Histogram) -> dict:
    out = {key: _ms(h.percentile(q)) for key, q in PERCENTILES}
    out["mean_ms"], out["max_ms"] = _ms(h.mean()), _ms(h.max())
    return out


def phase_summary(result: PhaseResult, run_start: float | None = None) -> dict:
    """One phase as plain numbers; its time series counts seconds from `run_start` (monotonic)."""
    offset = 0.0 if run_start is None else result.started - run_start
    seconds = max(result.phase.seconds, result.seconds)
    calls = result.calls()
    ops = {}
    merged, without_model, all_errors = Histogram(), Histogram(), Counter()
    for name in calls:
        hist, errors = result.ops[name], result.errors[name]
        merged.add(hist)
        if not OPERATIONS[name].needs_upstream:
            without_model.add(hist)
        all_errors.update(errors)
        ops[name] = {"calls": calls[name], "ok": hist.count, "throughput": calls[name] / seconds,
                     **latency(hist), "errors": dict(errors)}
    total = sum(calls.values())
    timeline = []
    for second in sorted(result.per_second):
        hists = result.per_second[second]
        tick = Histogram()
        for h in hists.values():
            tick.add(h)
        errors = sum(result.errors_per_second[second].values())
        timeline.append({"t": offset + second, "calls": tick.count + errors, "errors": errors,
                         "p50_ms": _ms(tick.percentile(50)), "p99_ms": _ms(tick.percentile(99)),
                         "ops": {n: {"calls": h.count, "p99_ms": _ms(h.percentile(99))} for n, h in hists.items()}})
    phase = result.phase
    return {"label": phase.label, "mode": phase.mode, "target_rate": phase.rate if phase.mode == "open" else None,
            "clients": phase.clients if phase.mode == "closed" else None, "planned_seconds": phase.seconds,
            "seconds": seconds, "start": round(offset, 3), "calls": total, "throughput": total / seconds,
            "all": latency(merged), "errors": dict(all_errors),
            # the database's own latency: cache_complete's misses wait for the model as long as it takes
            "without_model": latency(without_model) if without_model.count else None,
            "error_rate": sum(all_errors.values()) / total if total else 0.0, "unsent": result.unsent,
            "generator_cpu_seconds": result.generator_cpu_seconds,
            # a generator that spends most of a core per call cannot show what the server holds
            "generator_cpu_us_per_call": 1e6 * result.generator_cpu_seconds / total if total else None,
            "ops": ops, "timeline": timeline}


def client_calls(phases: list[dict]) -> dict[str, int]:
    total = Counter()
    for p in phases:
        total.update({name: op["calls"] for name, op in p["ops"].items()})
    return dict(total)


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def text(report: dict) -> str:
    """The report for a person at a terminal."""
    lines = []
    for p in report["phases"]:
        target = f"target {p['target_rate']:.0f}/s" if p["mode"] == "open" else f"{p['clients']} clients"
        lines.append(f"{p['label']} ({p['mode']} loop, {target}, {p['seconds']:.1f} s): "
                     f"{p['throughput']:.1f} calls/s, p50 {_fmt(p['all']['p50_ms'])} ms, "
                     f"p99 {_fmt(p['all']['p99_ms'])} ms, errors {sum(p['errors'].values())}"
                     + (f", {p['unsent']} not sent" if p["unsent"] else ""))
        if p.get("without_model") and any(OPERATIONS[n].needs_upstream for n in p["ops"]):
            lines.append(f"  without the calls that may wait for the cache's model: p50 "
                         f"{_fmt(p['without_model']['p50_ms'])} ms, p99 {_fmt(p['without_model']['p99_ms'])} ms")
        lines.append(f"  {'operation':<16}{'calls':>8}{'per s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
                     f"{'p999 ms':>9}  errors")
        for name, op in p["ops"].items():
            errors = ", ".join(f"{code} {n}" for code, n in op["errors"].items()) or "0"
            lines.append(f"  {name:<16}{op['calls']:>8}{op['throughput']:>9.1f}{_fmt(op['p50_ms']):>9}"
                         f"{_fmt(op['p90_ms']):>9}{_fmt(op['p99_ms']):>9}{_fmt(op['p999_ms']):>9}  {errors}")
    if "ramp" in report:
        r = report["ramp"]
        best = r["highest_sustained"]
        lines.append(f"ramp: highest rate sustained with p99 <= {r['p99_limit_ms']} ms and error rate <= "
                     f"{r['max_error_rate']}: " + (f"{best['target_rate']:.0f}/s (achieved {best['throughput']:.1f}/s, "
                                                   f"p99 {best['p99_ms']:.2f} ms)" if best else "none"))
    upstream = report.get("upstream") or {}
    if "calls" in upstream:
        calls = client_calls(report["phases"])
        asking = sorted(n for n in calls if OPERATIONS[n].needs_upstream)  # cache_complete, gateway_chat
        completes = sum(calls[n] for n in asking)
        share = f" ({upstream['calls'] / completes:.1%})" if completes else ""
        lines.append(f"stand-in model ({upstream['latency_ms']:g} ms a call) answered {upstream['calls']} of "
                     f"{completes} {' + '.join(asking) or 'cache_complete'} calls{share}; the cache answered the rest")
    if "server_check" in report:
        for row in report["server_check"]:
            lines.append(f"server counted {row['served']} {'/'.join(row['methods'])} for {row['sent']} "
                         f"{'+'.join(row['operations'])} calls: {'match' if row['match'] else 'MISMATCH'}")
    if report.get("soak", {}).get("memory"):
        s = report["soak"]
        m = s["memory"]
        lines.append(f"soak: server RSS {m['start_mb']:.1f} -> {m['end_mb']:.1f} MB (growth {m['growth_mb']:+.1f} MB, "
                     f"{m['growth_pct']:+.1f}%, {'flat' if m['flat'] else 'NOT flat'}), open files "
                     f"{s['open_files']['start']} -> {s['open_files']['end']}, errors {s['errors']}")
    if "read_back" in report:
        rb = report["read_back"]
        lines.append(f"read-back: {rb['live_checked']} live ids (vectors bit-exact: {rb['vectors_match']}), "
                     f"{rb['deleted_checked']} deleted, {rb['grants_checked']} grants, {rb['uncertain']} uncertain: "
                     f"{'OK' if rb['ok'] else 'FAILED'}")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=1, default=float))


def plot(report: dict, path: Path) -> None:
    """Latency over time (all phases on one clock) and throughput against latency; plus server
    memory and open files over time for a soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    phases = report["phases"]
    soak = report.get("soak") if report.get("soak", {}).get("samples") else None
    rows = 3 if soak else 2
    fig, axes = plt.subplots(rows, 1, figsize=(11, 4 * rows))
    ax = axes[0]
    points = [t for p in phases for t in p["timeline"]]
    times = [t["t"] for t in points]
    ax.plot(times, [t["p50_ms"] for t in points], label="p50, all operations", color="tab:blue")
    ax.plot(times, [t["p99_ms"] for t in points], label="p99, all operations", color="tab:red")
    names = sorted({n for t in points for n in t["ops"]})
    for name in names:
        ax.plot(times, [t["ops"].get(name, {}).get("p99_ms") for t in points], lw=0.7, alpha=0.6,
                label=f"p99 {name}")
    limit = report.get("ramp", {}).get("p99_limit_ms")
    if limit:
        ax.axhline(limit, color="k", ls="--", lw=0.8, label=f"p99 limit {limit} ms")
    for p in phases:
        ax.axvline(p["start"], color="grey", lw=0.5)
        if len(phases) > 1:
            ax.text(p["start"], 1.0, p["label"], transform=ax.get_xaxis_transform(), fontsize=7, rotation=90,
                    va="top", ha="left")
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("latency (ms, from the due time in open loop)")
    ax2 = ax.twinx()
    ax2.plot(times, [t["calls"] for t in points], color="0.3", ls=":", lw=1, label="calls/s (right axis)")
    ax2.set_ylabel("calls per second")
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = ax2.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, fontsize=7, loc="upper left")
    _plain_log_ticks(ax, ticker)
    ax.set_title(report.get("title", "load test"))
    ax = axes[1]
    if len(phases) > 1:
        x = [p["throughput"] for p in phases]
        model_ops = any(OPERATIONS[n].needs_upstream for p in phases for n in p["ops"])
        suffix = ", calls that may wait for the cache's model left out" if model_ops else ""
        for key, q in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            ax.plot(x, [(p.get("without_model") or p["all"])[key] for p in phases], marker="o", label=q + suffix)
        if limit:
            ax.axhline(limit, color="k", ls="--", lw=0.8, label=f"p99 limit {limit} ms")
        best = report.get("ramp", {}).get("highest_sustained")
        if best:
            ax.axvline(best["throughput"], color="tab:green", ls=":", label=f"highest sustained {best['throughput']:.0f}/s")
        ax.set_xlabel("achieved calls per second (one point per step)")
    else:
        ax.scatter([t["calls"] for t in points], [t["p99_ms"] for t in points], s=8, label="p99 of one second")
        ax.scatter([t["calls"] for t in points], [t["p50_ms"] for t in points], s=8, label="p50 of one second")
        ax.set_xlabel("calls in that second")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    _plain_log_ticks(ax, ticker)
    ax.legend(fontsize=8)
    ax.set_title("throughput against latency")
    if soak:
        ax = axes[2]
        samples = soak["samples"]
        ax.plot([s["t"] for s in samples], [s["rss_mb"] for s in samples], color="tab:purple", label="server RSS (MB)")
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MB)")
        ax2 = ax.twinx()
        ax2.plot([s["t"] for s in samples], [s["open_files"] for s in samples], color="tab:orange", lw=0.8,
                 label="open files")
        ax2.set_ylabel("open files")
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
        ax.set_title("server memory and open files")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plain_log_ticks(ax, ticker) -> None:
    """Log-scale latency axes labelled 1, 2, 5, 10, 20 ms rather than in powers of ten."""
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
