"""The operator's page: `GET /operator` on the HTTP port (`curator serve --http-port`), for admin keys.

One server-rendered HTML page (inline CSS, plots as inline SVG drawn here; no script, no asset
from anywhere, nothing to build) and the same facts as JSON at `GET /operator/data.json`:
collections (dimension, metric, vectors, tenants by state, index memory by part), each
collection's largest tenants with their counts and states, the process's memory, the recent
request rates and latencies of gRPC and of the HTTP gateway (sampled here from the Prometheus
series every few seconds), and per cache category the hit rate against its break-even, the
threshold (min_similarity) and the TTL. The page refreshes itself every 10 s.

Who may look (see README, "The operator's page"): an admin key, given as `Authorization: Bearer`
(scripts, data.json) or once in the page's form, which opens a session: a random id in an
HttpOnly, SameSite=Strict cookie (Secure under TLS), the key itself kept nowhere. An admin may
also ask `POST /operator/ticket` for a single-use ticket valid 60 s that opens a session in a
browser it cannot give headers to (`GET /operator/enter?ticket=...`). No key: 401 and the form;
a tenant key: 403. Open mode (no keys file): every caller is admin, as on gRPC.

Must never: change anything it shows (it wakes no inactive tenant, marks none used, resets no
counter); put a key in a URL, a cookie or a log; show a name unescaped (tenant and category
names come from callers); block the event loop on the engine.
"""

import asyncio
import html
import logging
import math
import os
import resource
import secrets
import time
from collections import deque
from dataclasses import dataclass

from aiohttp import web

import curator
from curator.errors import UnauthenticatedError

from .auth import OPEN, KeyRing, Principal

log = logging.getLogger("curator.operator")
COOKIE = "curator_operator"
SESSION_SECONDS = 8 * 3600
TICKET_SECONDS = 60.0
MAX_SESSIONS = 256   # the oldest goes first: a flood of logins cannot grow the process
MAX_TICKETS = 64
REFRESH_SECONDS = 10
TOP_TENANTS = 100    # per collection, the largest by vectors; the total is shown beside
TOP_CATEGORIES = 50  # callers name categories: the busiest are shown, the count of the rest beside
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


@dataclass
class _Pass:
    principal: Principal
    expires: float  # time.monotonic()


class OperatorPage:
    def __init__(self, db, keys: KeyRing, metrics, gateway_metrics, *, secure: bool = False,
                 sample_seconds: float = 5.0, samples: int = 120, top_tenants: int = TOP_TENANTS):
        self.db, self.keys, self.secure, self.top_tenants = db, keys, secure, top_tenants
        self.history = RequestHistory(metrics, gateway_metrics, samples)
        self.sample_seconds = sample_seconds
        self._sessions: dict[str, _Pass] = {}  # touched on the event loop's thread only
        self._tickets: dict[str, _Pass] = {}
        self._sampler = None
        self._run = None

    # -- on the gateway's aiohttp application ----------------------------------------------------------

    def install(self, app: web.Application, run) -> None:
        """Add the routes; `run(call)` runs a blocking call off the event loop."""
        self._run = run
        app.router.add_get("/operator", self._page)
        app.router.add_get("/operator/data.json", self._data)
        app.router.add_post("/operator/login", self._login)
        app.router.add_post("/operator/logout", self._logout)
        app.router.add_post("/operator/ticket", self._ticket)
        app.router.add_get("/operator/enter", self._enter)
        app.on_startup.append(self._start_sampling)
        app.on_cleanup.append(self._stop_sampling)

    async def _start_sampling(self, app) -> None:
        async def sample():
            while True:
                try:
                    self.history.sample()
                except Exception:  # noqa: BLE001 - a gap in the plots, not a dead sampler
                    log.exception("operator's page: sampling the request series failed")
                await asyncio.sleep(self.sample_seconds)

        self._sampler = asyncio.get_running_loop().create_task(sample())

    async def _stop_sampling(self, app) -> None:
        if self._sampler is not None:
            self._sampler.cancel()

    # -- who is asking ---------------------------------------------------------------------------------

    def _who(self, request: web.Request) -> tuple[Principal | None, int, str]:
        """(the caller, 200) or (None, 401 | 403, why)."""
        if self.keys.open:
            return OPEN, 200, ""
        header = request.headers.get("Authorization")
        if header is not None:
            principal, status, why = self._of_key(header.partition(" ")[2].strip()
                                                  if header.partition(" ")[0].lower() == "bearer" else "")
        else:
            held = self._sessions.get(request.cookies.get(COOKIE, ""))
            if held is None or held.expires < time.monotonic():
                return None, 401, "an admin key is needed to see this page"
            principal, status, why = held.principal, 200, ""
        if principal is not None and not principal.admin:
            return None, 403, f"key {principal.name!r} is bound to tenants; this page needs an admin key"
        return principal, status, why

    def _of_key(self, key: str) -> tuple[Principal | None, int, str]:
        if not key:
            return None, 401, "no API key: send 'Authorization: Bearer <key>' or sign in with the form"
        try:
            return self.keys.principal_of((("authorization", "Bearer " + key),)), 200, ""
        except UnauthenticatedError:
            return None, 401, "unknown API key"

    def _open_session(self, principal: Principal, response: web.StreamResponse) -> None:
        now = time.monotonic()
        for sid in [sid for sid, held in self._sessions.items() if held.expires < now]:
            del self._sessions[sid]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = _Pass(principal, now + SESSION_SECONDS)
        response.set_cookie(COOKIE, sid, path="/operator", max_age=SESSION_SECONDS, httponly=True,
                            samesite="Strict", secure=self.secure)

    # -- routes ----------------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        principal, status, why = self._who(request)
        if principal is None:
            return _html(_login_page(why), status)
        facts = await self._run(self.facts)
        return _html(render(facts, signed_in=not self.keys.open and "Authorization" not in request.headers))

    async def _data(self, request: web.Request) -> web.Response:
        principal, status, why = self._who(request)
        if principal is None:
            return web.json_response({"error": why}, status=status, headers=_HEADERS)
        return web.json_response(await self._run(self.facts), headers=_HEADERS)

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        principal, status, why = self._of_key(str(form.get("key", "")).strip())
        if principal is not None and not principal.admin:
            principal, status, why = None, 403, f"key {principal.name!r} is bound to tenants; this page needs an admin key"
        if principal is None:
            return _html(_login_page(why), status)
        response = _see_other("/operator")
        self._open_session(principal, response)
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = _see_other("/operator")
        response.del_cookie(COOKIE, path="/operator")
        return response

    async def _ticket(self, request: web.Request) -> web.Response:
        """A single-use ticket that opens a session, for a browser that cannot send headers."""
        if not self.keys.open and "Authorization" not in request.headers:
            return web.json_response({"error": "a ticket is given for an admin key in the Authorization header only"},
                                     status=401, headers=_HEADERS)
        principal, status, why = self._who(request)
        if principal is None:
            return web.json_response({"error": why}, status=status, headers=_HEADERS)
        now = time.monotonic()
        for ticket in [t for t, held in self._tickets.items() if held.expires < now]:
            del self._tickets[ticket]
        while len(self._tickets) >= MAX_TICKETS:
            del self._tickets[next(iter(self._tickets))]
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = _Pass(principal, now + TICKET_SECONDS)
        return web.json_response({"ticket": ticket, "path": f"/operator/enter?ticket={ticket}",
                                  "expires_in": TICKET_SECONDS}, headers=_HEADERS)

    async def _enter(self, request: web.Request) -> web.Response:
        held = self._tickets.pop(request.query.get("ticket", ""), None)
        if held is None or held.expires < time.monotonic():
            return _html(_login_page("that ticket is unknown, used or expired"), 401)
        response = _see_other("/operator")
        self._open_session(held.principal, response)
        return response

    # -- what the page shows (blocking: run off the event loop) ---------------------------------------

    def facts(self) -> dict:
        collections = []
        for name in self.db.list_collections():
            try:
                col = self.db.collection(name)
                stats = col.stats()
                total, top = col.tenant_summary(self.top_tenants)
            except Exception:  # noqa: BLE001 - dropped while we looked
                continue
            tenants = stats["tenants"]
            collections.append({
                "name": name, "dim": col.dim, "metric": str(col.metric), "vectors": stats["vectors"],
                "resident_vectors": stats["resident_vectors"], "evicted_vectors": stats["evicted_vectors"],
                "offloaded_vectors": stats["offloaded_vectors"], "tenants": tenants,
                "states": {"active": tenants - stats["inactive_tenants"] - stats["offloaded_tenants"],
                           "inactive": stats["inactive_tenants"], "offloaded": stats["offloaded_tenants"]},
                "memory_bytes": {part: int(size) for part, size in stats["memory_bytes"].items()},
                "top_tenants": [{"tenant": t, "vectors": v, "state": s} for t, v, s in top],
                "tenants_not_shown": total - len(top),
            })
        return {"version": curator.__version__, "time": time.time(), "collections": collections,
                "memory": {"process_rss_bytes": _rss()}, "requests": self.history.window(),
                "cache": self._cache()}

    def _cache(self) -> dict:
        cache = self.db.cache
        stats = cache.stats()
        rows = sorted(stats["categories"].items(), key=lambda kv: (-kv[1].get("lookups", 0), -kv[1]["entries"], kv[0]))
        categories = []
        for category, row in rows[:TOP_CATEGORIES]:
            policy = cache.policy(category)
            configured, effective = policy["configured"], policy["effective"]
            categories.append({
                "category": category, "entries": row["entries"], "bytes": row["bytes"],
                "lookups": row.get("lookups", 0), "hits": row.get("hits", 0),
                "hit_rate": row.get("hit_rate"), "break_even_hit_rate": row.get("break_even_hit_rate"),
                "min_similarity": configured["min_similarity"], "ttl": configured["ttl"],
                "effective_min_similarity": effective["min_similarity"], "effective_ttl": effective["ttl"],
            })
        return {"categories": categories, "categories_not_shown": max(0, len(rows) - TOP_CATEGORIES),
                "entries": stats["entries"], "bytes": stats["bytes"], "pressure": stats["load"]["pressure"]}


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak, where /proc is missing


# -- request rates and latencies -------------------------------------------------------------------------


class RequestHistory:
    """Cumulative request counts and latency buckets of gRPC (by method) and of the HTTP gateway
    (by route), read from their Prometheus series every few seconds into a ring; rates and
    quantiles come from the differences between samples (the series themselves are never reset)."""

    def __init__(self, metrics, gateway_metrics, samples: int):
        self.sources = {"grpc": (metrics.requests, metrics.latency, "method", lambda labels: labels["code"] != "OK")}
        if gateway_metrics is not None:
            self.sources["http"] = (gateway_metrics.requests, gateway_metrics.latency, "route",
                                    lambda labels: int(labels["status"]) >= 400)
        self.ring: deque = deque(maxlen=samples)

    def read(self) -> tuple[float, dict]:
        """(now, {source: {key: [count, errors, cumulative bucket counts], "_bounds": upper bounds}})."""
        out = {}
        for source, (counter, histogram, label, is_error) in self.sources.items():
            rows: dict = {}
            for metric in counter.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        row = rows.setdefault(sample.labels[label], [0.0, 0.0, {}])
                        row[0] += sample.value
                        if is_error(sample.labels):
                            row[1] += sample.value
            bounds = set()
            for metric in histogram.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        bounds.add(le)
                        buckets = rows.setdefault(sample.labels[label], [0.0, 0.0, {}])[2]
                        buckets[le] = buckets.get(le, 0.0) + sample.value
            out[source] = {"rows": rows, "bounds": sorted(bounds)}
        return time.time(), out

    def sample(self) -> None:
        self.ring.append(self.read())

    def window(self) -> dict:
        """Per source: a series over the ring (time, requests/s, p50 and p99 in ms, between
        consecutive samples) and per key the totals over the whole ring."""
        ring, now = list(self.ring), self.read()
        samples = (ring or [now]) + [now]  # the table runs to now; the series, from even steps, to the last sample
        out = {"seconds": samples[-1][0] - samples[0][0]}
        for source in self.sources:
            series = []
            for (t0, a), (t1, b) in zip(ring, ring[1:]):
                count, buckets, bounds = _delta(a[source], b[source], None)
                if t1 - t0 > 0:
                    series.append({"t": t1, "rate": count / (t1 - t0), "p50_ms": _ms(_quantile(0.5, bounds, buckets)),
                                   "p99_ms": _ms(_quantile(0.99, bounds, buckets))})
            first, last = samples[0][1][source], samples[-1][1][source]
            span = samples[-1][0] - samples[0][0]
            keys = []
            for key in sorted(last["rows"]):
                count, buckets, bounds = _delta(first, last, key)
                errors = last["rows"][key][1] - first["rows"].get(key, [0, 0, {}])[1]
                if count:
                    keys.append({"name": key, "requests": int(count), "errors": int(errors),
                                 "rate": count / span if span > 0 else None,
                                 "p50_ms": _ms(_quantile(0.5, bounds, buckets)),
                                 "p99_ms": _ms(_quantile(0.99, bounds, buckets))})
            out[source] = {"series": series, "by_name": keys}
        return out


def _delta(a: dict, b: dict, key) -> tuple[float, list[float], list[float]]:
    """Requests and cumulative bucket counts between two reads of one source (one key, or all)."""
    bounds = b["bounds"]
    keys = [key] if key is not None else list(b["rows"])
    count, buckets = 0.0, [0.0] * len(bounds)
    for k in keys:
        new, old = b["rows"].get(k, [0, 0, {}]), a["rows"].get(k, [0, 0, {}])
        for i, le in enumerate(bounds):
            buckets[i] += new[2].get(le, 0.0) - old[2].get(le, 0.0)
        count += new[2].get(math.inf, new[0]) - old[2].get(math.inf, old[0])
    return count, buckets, bounds


def _quantile(q: float, bounds: list[float], buckets: list[float]) -> float | None:
    """As Prometheus's histogram_quantile: linear within the bucket the rank falls in; in the last
    (+Inf) bucket, the highest finite bound."""
    if not buckets or buckets[-1] <= 0:
        return None
    rank = q * buckets[-1]
    below, lower = 0.0, 0.0
    for le, cumulative in zip(bounds, buckets):
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            inside = cumulative - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        below, lower = cumulative, le
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


# -- HTML and SVG ----------------------------------------------------------------------------------------

_e = html.escape
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 24px;color:#1d2433;background:#f6f7f9}
header{display:flex;justify-content:space-between;align-items:center;border-bottom:1px solid #d5d9e0;margin-bottom:8px}
h1{font-size:20px;margin:12px 0}h2{font-size:16px;margin:20px 0 6px}h3{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;background:#fff;margin:4px 0 8px}
th,td{padding:3px 8px;border:1px solid #e1e4ea;text-align:right;white-space:nowrap}
th{background:#eef1f5;font-weight:600}td.l,th.l{text-align:left}
.muted{color:#6b7385}.row{display:flex;flex-wrap:wrap;gap:16px}.card{background:#fff;border:1px solid #e1e4ea;padding:8px}
.active{color:#1e7d32}.inactive{color:#a66300}.offloaded{color:#5a4fb0}.bad{color:#b3261e}.good{color:#1e7d32}
button{font:inherit}
"""
_COLOURS = {"active": "#43a047", "inactive": "#f0a030", "offloaded": "#7e6fd6"}


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **_HEADERS})


def _document(title: str, body: str, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def _login_page(why: str) -> str:
    return _document("Curator: operator's page", (
        "<header><h1>Curator: operator's page</h1></header>"
        f'<p class="bad">{_e(why)}</p>'
        '<form method="post" action="/operator/login"><label>Admin key '
        '<input type="password" name="key" autocomplete="off" size="48"></label> '
        "<button>Sign in</button></form>"
        '<p class="muted">The key opens a session (an HttpOnly cookie) and is kept nowhere.</p>'))


def _num(value) -> str:
    if value is None:
        return "–"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _seconds(x) -> str:
    return "none" if x is None else f"{x:g} s"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are HTML already (escaped by the caller); the first `left` columns align left."""
    cls = lambda i: ' class="l"' if i < left else ""  # noqa: E731
    return ("<table><tr>" + "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head)) + "</tr>"
            + "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
            + "</table>")


def bars(rows: list[tuple[str, float, str]], width: int = 520, colour: str = "#4f7cc9") -> str:
    """A horizontal bar per (label, value, text), scaled to the largest value."""
    top = max([v for _, v, _ in rows] + [1e-12])
    h, out = 22, []
    for i, (label, value, text) in enumerate(rows):
        y = i * h
        w = max(1.0, (width - 300) * value / top)
        out.append(f'<text x="0" y="{y + 15}" font-size="12">{_e(label[:32])}</text>'
                   f'<rect x="180" y="{y + 4}" width="{w:.1f}" height="14" fill="{colour}"/>'
                   f'<text x="{184 + w:.1f}" y="{y + 15}" font-size="12">{_e(text)}</text>')
    return f'<svg width="{width}" height="{h * len(rows) + 4}" role="img">{"".join(out)}</svg>'


def states_bar(states: dict[str, int], width: int = 120) -> str:
    total = sum(states.values()) or 1
    x, parts = 0.0, []
    for state in ("active", "inactive", "offloaded"):
        w = width * states.get(state, 0) / total
        if w:
            parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="12" fill="{_COLOURS[state]}">'
                         f"<title>{state}: {states[state]}</title></rect>")
        x += w
    return f'<svg width="{width}" height="12" role="img">{"".join(parts)}</svg>'


def hit_rate_chart(categories: list[dict], width: int = 620) -> str:
    """Per category: the hit rate as a bar (green at or over break-even, red under, grey while
    the break-even is unmeasured) and the break-even as a black tick, on one 0-100% scale."""
    h, left, scale = 26, 170, width - 170 - 150
    out = [f'<text x="{left}" y="12" font-size="11" fill="#6b7385">0%</text>'
           f'<text x="{left + scale - 24}" y="12" font-size="11" fill="#6b7385">100%</text>']
    for i, row in enumerate(categories):
        y = 18 + i * h
        rate, even = row["hit_rate"] or 0.0, row["break_even_hit_rate"]
        colour = "#9aa3b2" if even is None else "#43a047" if rate >= even else "#d9534f"
        out.append(f'<text x="0" y="{y + 15}" font-size="12">{_e(row["category"][:24])}</text>'
                   f'<rect x="{left}" y="{y + 3}" width="{scale}" height="16" fill="#eef1f5"/>'
                   f'<rect x="{left}" y="{y + 3}" width="{max(1.0, scale * min(rate, 1.0)):.1f}" height="16" '
                   f'fill="{colour}"/>')
        if even is not None:
            x = left + scale * min(even, 1.0)
            out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 22}" stroke="#1d2433" stroke-width="2"/>')
        out.append(f'<text x="{left + scale + 8}" y="{y + 15}" font-size="12">{_pct(row["hit_rate"])} vs '
                   f'{_pct(even) if even is not None else "unmeasured"}</text>')
    return (f'<svg width="{width}" height="{22 + h * len(categories)}" role="img" '
            f'aria-label="hit rate against break-even per category">{"".join(out)}</svg>')


def line_chart(lines: dict[str, list[tuple[float, float | None]]], unit: str, seconds: float,
               width: int = 560, height: int = 170) -> str:
    """Lines of (seconds ago, value) over the recent window, from 0 to the highest value."""
    colours = ["#4f7cc9", "#d9534f", "#43a047", "#f0a030"]
    left, bottom, top = 56, 22, 18
    span = max(seconds, 1.0)
    values = [v for points in lines.values() for _, v in points if v is not None]
    high = max(values + [0.0]) * 1.15 or 1.0
    x_of = lambda ago: left + (width - left - 8) * (1 - ago / span)  # noqa: E731
    y_of = lambda v: top + (height - top - bottom) * (1 - v / high)  # noqa: E731
    out = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 8}" y2="{height - bottom}" stroke="#9aa3b2"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#9aa3b2"/>',
           f'<text x="{left - 4}" y="{top + 4}" font-size="11" text-anchor="end">{high:.3g}</text>',
           f'<text x="{left - 4}" y="{height - bottom}" font-size="11" text-anchor="end">0</text>',
           f'<text x="{left}" y="{height - 6}" font-size="11">-{span:.0f} s</text>',
           f'<text x="{width - 8}" y="{height - 6}" font-size="11" text-anchor="end">now</text>',
           f'<text x="{left + 4}" y="12" font-size="11" fill="#6b7385">{_e(unit)}</text>']
    legend_x = left + 90
    for i, (name, points) in enumerate(lines.items()):
        colour = colours[i % len(colours)]
        drawn = [(x_of(ago), y_of(v)) for ago, v in points if v is not None and ago <= span]
        if len(drawn) == 1:
            out.append(f'<circle cx="{drawn[0][0]:.1f}" cy="{drawn[0][1]:.1f}" r="2.5" fill="{colour}"/>')
        elif drawn:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in drawn) + '"/>')
        out.append(f'<rect x="{legend_x}" y="4" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{legend_x + 14}" y="13" font-size="11">{_e(name)}</text>')
        legend_x += 16 + 7 * len(name) + 12
    return f'<svg width="{width}" height="{height}" role="img">{"".join(out)}</svg>'


def render(facts: dict, signed_in: bool = False) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(facts["time"]))
    out = ['<header><h1>Curator: operator\'s page</h1><div class="muted">'
           f'version {_e(facts["version"])} · {when} · refreshes every {REFRESH_SECONDS} s'
           + (' <form method="post" action="/operator/logout" style="display:inline"><button>Sign out</button></form>'
              if signed_in else "") + "</div></header>"]
    collections = facts["collections"]

    out.append("<h2>Collections</h2>")
    if not collections:
        out.append('<p class="muted">No collections.</p>')
    else:
        rows = [[f"<b>{_e(c['name'])}</b>", _num(c["dim"]), _e(c["metric"]), _num(c["vectors"]),
                 _num(c["resident_vectors"]), _num(c["evicted_vectors"]), _num(c["offloaded_vectors"]),
                 _num(c["tenants"]), f'<span class="active">{_num(c["states"]["active"])}</span>',
                 f'<span class="inactive">{_num(c["states"]["inactive"])}</span>',
                 f'<span class="offloaded">{_num(c["states"]["offloaded"])}</span>', states_bar(c["states"]),
                 _bytes(sum(c["memory_bytes"].values()))] for c in collections]
        out.append(_table(["collection", "dim", "metric", "vectors", "in memory", "evicted", "in archives",
                           "tenants", "active", "inactive", "offloaded", "states", "index memory"], rows))

    out.append("<h2>Memory</h2>")
    memory = [("process (RSS)", facts["memory"]["process_rss_bytes"], _bytes(facts["memory"]["process_rss_bytes"]))]
    memory += [(f"index: {c['name']}", sum(c["memory_bytes"].values()), _bytes(sum(c["memory_bytes"].values())))
               for c in collections]
    memory.append(("cache entries", facts["cache"]["bytes"], _bytes(facts["cache"]["bytes"])))
    parts = sorted({part for c in collections for part in c["memory_bytes"]})
    out.append('<div class="row"><div class="card">' + bars(memory) + "</div>")
    if collections:
        out.append('<div class="card">' + _table(["collection"] + [_e(p) for p in parts], [
            [_e(c["name"])] + [_bytes(c["memory_bytes"].get(p)) for p in parts] for c in collections]) + "</div>")
    out.append("</div>")

    out.append("<h2>Tenants</h2>")
    for c in collections:
        more = f", {c['tenants_not_shown']:,} smaller not shown" if c["tenants_not_shown"] else ""
        out.append(f"<h3>{_e(c['name'])} <span class=\"muted\">({_num(c['tenants'])} tenants{more})</span></h3>")
        rows = [[_e(t["tenant"]), _num(t["vectors"]), f'<span class="{t["state"]}">{_e(t["state"])}</span>']
                for t in c["top_tenants"]]
        out.append(_table(["tenant", "vectors", "state"], rows) if rows else '<p class="muted">No tenants.</p>')

    requests = facts["requests"]
    out.append(f'<h2>Requests <span class="muted">(last {requests["seconds"]:.0f} s)</span></h2>')
    now = facts["time"]
    rate_lines, latency_lines = {}, {}
    for source, title in (("grpc", "gRPC"), ("http", "HTTP")):
        if source not in requests:
            continue
        series = requests[source]["series"]
        rate_lines[title] = [(now - p["t"], p["rate"]) for p in series]
        latency_lines[f"{title} p50"] = [(now - p["t"], p["p50_ms"]) for p in series]
        latency_lines[f"{title} p99"] = [(now - p["t"], p["p99_ms"]) for p in series]
    out.append('<div class="row"><div class="card">' + line_chart(rate_lines, "requests / s", requests["seconds"])
               + '</div><div class="card">' + line_chart(latency_lines, "latency, ms", requests["seconds"])
               + "</div></div>")
    rows = [[("gRPC " if source == "grpc" else "HTTP ") + _e(k["name"]), _num(k["requests"]), _num(k["errors"]),
             _num(k["rate"]), _num(k["p50_ms"]), _num(k["p99_ms"])]
            for source in ("grpc", "http") if source in requests for k in requests[source]["by_name"]]
    out.append(_table(["method or route", "requests", "errors", "per second", "p50 ms", "p99 ms"], rows) if rows
               else '<p class="muted">No requests in the window.</p>')

    cache = facts["cache"]
    more = f", {cache['categories_not_shown']:,} quieter categories not shown" if cache["categories_not_shown"] else ""
    out.append(f'<h2>Cache <span class="muted">({_num(cache["entries"])} entries, {_bytes(cache["bytes"])}, '
               f"upstream pressure {cache['pressure']:.2f}{more})</span></h2>")
    if cache["categories"]:
        out.append('<div class="card" style="display:inline-block">' + hit_rate_chart(cache["categories"])
                   + '<div class="muted">bar: hit rate (green at or over break-even, red under); '
                   "tick: break-even hit rate</div></div>")
        rows = []
        for row in cache["categories"]:
            even = row["break_even_hit_rate"]
            verdict = "" if even is None else ' <span class="good">pays</span>' if (row["hit_rate"] or 0) >= even \
                else ' <span class="bad">below</span>'
            relaxed = "" if row["effective_min_similarity"] == row["min_similarity"] and \
                row["effective_ttl"] == row["ttl"] else \
                f' <span class="muted">(now {_num(row["effective_min_similarity"])}, {_seconds(row["effective_ttl"])})</span>'
            rows.append([_e(row["category"]), _num(row["entries"]), _bytes(row["bytes"]), _num(row["lookups"]),
                         _num(row["hits"]), _pct(row["hit_rate"]), _pct(even) + verdict,
                         _num(row["min_similarity"]) + relaxed, _seconds(row["ttl"])])
        out.append(_table(["category", "entries", "bytes", "lookups", "hits", "hit rate", "break-even",
                           "threshold", "TTL"], rows))
    else:
        out.append('<p class="muted">No cache categories yet.</p>')
    return _document("Curator: operator's page", "".join(out), refresh=True)
