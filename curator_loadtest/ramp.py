"""The ramp: open-loop steps of rising rate until the p99 latency or the error rate crosses its
limit (or the rate is not reached), and the highest rate that held. A failed step is run once
more before the ramp stops, since one noisy second on a small machine should not end it.

The p99 judged is the database's: over the operations that do not wait for the cache's model
(a cache_complete miss takes as long as the model does, whatever the server's load), unless
every operation of the mix does."""

from .driver import Phase, WorkerPool
from .report import phase_summary


def judged(step: dict) -> dict:
    """The latencies the limit applies to (see above)."""
    return step.get("without_model") or step["all"]


def passes(step: dict, p99_limit_ms: float, max_error_rate: float) -> tuple[bool, str]:
    p99 = judged(step)["p99_ms"]
    if step["calls"] == 0 or p99 is None:
        return False, "no calls completed"
    if p99 > p99_limit_ms:
        return False, f"p99 {p99:.1f} ms > {p99_limit_ms} ms"
    if step["error_rate"] > max_error_rate:
        return False, f"error rate {step['error_rate']:.4f} > {max_error_rate}"
    if step["unsent"] or step["throughput"] < 0.95 * step["target_rate"]:
        return False, f"achieved {step['throughput']:.0f}/s of {step['target_rate']:.0f}/s"
    return True, "ok"


def run_ramp(pool: WorkerPool, start_rate: float, factor: float, step_seconds: float, max_rate: float,
             p99_limit_ms: float, max_error_rate: float, run_start: float | None = None, progress=None,
             retries: int = 1) -> tuple[list[dict], dict]:
    """Run the steps; returns their summaries and the ramp's verdict (times from `run_start`)."""
    steps, best = [], None
    rate, failures = start_rate, 0
    while rate <= max_rate:
        result = pool.run(Phase(f"{rate:.0f}/s", "open", step_seconds, rate=rate), progress)
        step = phase_summary(result, run_start)
        step["passed"], step["verdict"] = passes(step, p99_limit_ms, max_error_rate)
        steps.append(step)
        if step["passed"]:
            best, failures = step, 0
            rate *= factor
        else:
            failures += 1
            if failures > retries:
                break
    verdict = {"p99_limit_ms": p99_limit_ms, "max_error_rate": max_error_rate, "start_rate": start_rate,
               "factor": factor, "step_seconds": step_seconds,
               "highest_sustained": None if best is None else {
                   "target_rate": best["target_rate"], "throughput": best["throughput"],
                   "p50_ms": judged(best)["p50_ms"], "p99_ms": judged(best)["p99_ms"],
                   "error_rate": best["error_rate"],
                   "generator_cpu_us_per_call": best.get("generator_cpu_us_per_call")},
               "stopped_by": steps[-1]["verdict"] if steps and not steps[-1]["passed"] else "max rate reached"}
    return steps, verdict
