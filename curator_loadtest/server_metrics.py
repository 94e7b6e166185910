"""What the server says it served: `curator_requests_total{method,code}` from its Prometheus
endpoint, and the HTTP gateway's `curator_http_requests_total{route,status}` (as method = route,
code = status), and the check of a run's own counts against it (by operation, through the server
methods or gateway routes each operation is registered with)."""

import urllib.parse
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from .workload import OPERATIONS


def _samples(url: str, timeout: float):
    """Every sample the Prometheus endpoint at `url` serves now."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        yield from family.samples


def scrape_requests(url: str, timeout: float = 10.0, readers: bool = True) -> dict[tuple[str, str], float]:
    """(method, code) -> requests served so far, by the server and (`curator serve --readers`) by
    each of its read replicas, whose endpoints its own names (`curator_reader_metrics_port`)."""
    counts: dict[tuple[str, str], float] = defaultdict(float)
    reader_ports = []
    for sample in _samples(url, timeout):
        if sample.name == "curator_requests_total":
            counts[(sample.labels["method"], sample.labels["code"])] += sample.value
        elif sample.name == "curator_http_requests_total":  # also labelled by X-Cache outcome: summed
            counts[(sample.labels["route"], sample.labels["status"])] += sample.value
        elif sample.name == "curator_reader_metrics_port":
            reader_ports.append(int(sample.value))
    if readers:
        parts = urllib.parse.urlsplit(url)
        for port in reader_ports:
            reader_url = urllib.parse.urlunsplit((parts.scheme, f"{parts.hostname}:{port}", parts.path, "", ""))
            for key, value in scrape_requests(reader_url, timeout, readers=False).items():
                counts[key] += value
    return dict(counts)


def handled_seconds(url: str, methods=("SearchStream", "SearchGroups"), timeout: float = 10.0) -> tuple[float, float]:
    """(seconds, searches) the server has spent in its handlers on these methods so far
    (`curator_request_seconds`: a search's time from its turn's start to its answer, the engine's
    search and the handler's Python; a group's searches each count a share of the group's)."""
    seconds = count = 0.0
    for sample in _samples(url, timeout):
        if sample.labels.get("method") in methods:
            if sample.name == "curator_request_seconds_sum":
                seconds += sample.value
            elif sample.name == "curator_request_seconds_count":
                count += sample.value
    return seconds, count


def served_between(before: dict, after: dict) -> dict[str, dict[str, int]]:
    """method -> code -> requests served between two scrapes."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (method, code), value in after.items():
        delta = int(round(value - before.get((method, code), 0.0)))
        if delta:
            out[method][code] = delta
    return dict(out)


def compare(client_counts: dict[str, int], served: dict[str, dict[str, int]]) -> list[dict]:
    """Per group of server methods: calls the load clients made against requests the server counted.

    Operations sharing methods (plain and filtered search both go over SearchGroups, or SearchStream) are summed."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for name in client_counts:
        groups[OPERATIONS[name].methods].append(name)
    rows = []
    for methods, names in groups.items():
        sent = sum(client_counts[n] for n in names)
        counted = sum(sum(served.get(m, {}).values()) for m in methods)
        rows.append({"methods": list(methods), "operations": sorted(names), "sent": sent, "served": counted,
                     "match": sent == counted})
    return rows
