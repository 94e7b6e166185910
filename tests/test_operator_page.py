"""The operator's page (server/operator_page.py) on a seeded server (benchmarks/operator_page.py):
what an admin key sees over HTTP and in headless Chromium (Debian's `chromium`, installed by
`make system`; missing, these tests fail rather than skip), what a tenant key and no key get, the
session and the single-use ticket, escaping of caller-chosen names, and that looking wakes no one."""

import http.client
import json
import time

import numpy as np
import pytest

from benchmarks.operator_page import ADMIN_KEY, TENANT_KEY, browse, chromium, seeded_server, ticket_url

HOSTILE_TENANT = '<script>alert("tenant")</script>'
HOSTILE_CATEGORY = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with seeded_server(tmp_path_factory.mktemp("operator"), sample_seconds=0.2) as running:
        running.db.collection("images").insert(np.array([10_000]), np.ones((1, 64), np.float32), tenant=HOSTILE_TENANT)
        running.db.cache.store("alice", "a prompt in a strange category", "an answer", category=HOSTILE_CATEGORY)
        time.sleep(0.5)  # a few samples of the request series
        yield running


@pytest.fixture(scope="module")
def browser():
    try:
        return chromium()
    except RuntimeError as missing:
        pytest.fail(str(missing))  # `make test` runs this: a missing browser is a failure, not a skip


def call(server, method, path, *, key=None, cookie=None, body=None, content_type=None):
    """(status, headers, body text) of one request, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", server.gateway.port, timeout=30)
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if cookie is not None:
        headers["Cookie"] = cookie
    if content_type is not None:
        headers["Content-Type"] = content_type
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.headers, answer.read().decode()
    finally:
        connection.close()


def test_an_admin_key_sees_collections_tenants_requests_and_cache(server):
    status, headers, page = call(server, "GET", "/operator", key=ADMIN_KEY)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in \
        headers["Content-Security-Policy"]  # no script may run, no asset be fetched
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for shown in ("docs", "images", "docs-tenant-05", "inactive", "offloaded", "finance", "code", "0.9", "300 s",
                  "3600 s", "SearchStream", "/v1/chat/completions", "<svg"):
        assert shown in page, shown

    status, _, text = call(server, "GET", "/operator/data.json", key=ADMIN_KEY)
    assert status == 200
    facts = json.loads(text)
    docs = next(c for c in facts["collections"] if c["name"] == "docs")
    assert (docs["dim"], docs["tenants"], docs["states"]) == (32, 10, {"active": 6, "inactive": 3, "offloaded": 1})
    assert docs["top_tenants"][0] == {"tenant": "alice", "vectors": 400, "state": "active"}
    assert {t["tenant"]: t["state"] for t in docs["top_tenants"]}["docs-tenant-09"] == "offloaded"
    assert sum(docs["memory_bytes"].values()) > 0 and facts["memory"]["process_rss_bytes"] > 0
    categories = {row["category"]: row for row in facts["cache"]["categories"]}
    assert (categories["finance"]["min_similarity"], categories["finance"]["ttl"]) == (0.9, 300.0)
    assert (categories["code"]["min_similarity"], categories["code"]["ttl"]) == (0.8, 3600.0)
    for row in (categories["finance"], categories["code"]):
        assert row["hits"] > 0 and 0 < row["hit_rate"] < 1 and row["break_even_hit_rate"] is not None
    grpc = {row["name"]: row for row in facts["requests"]["grpc"]["by_name"]}
    assert grpc["SearchStream"]["requests"] >= 20 and grpc["SearchStream"]["p99_ms"] > 0
    assert facts["requests"]["http"]["series"], "the sampled series is empty"


def test_a_tenant_key_is_refused_and_no_key_is_asked_for_one(server):
    for path in ("/operator", "/operator/data.json"):
        assert call(server, "GET", path, key=TENANT_KEY)[0] == 403
        assert call(server, "GET", path)[0] == 401
        assert call(server, "GET", path, key="not-a-key")[0] == 401
    status, _, page = call(server, "GET", "/operator")
    assert 'action="/operator/login"' in page and "docs-tenant" not in page
    assert call(server, "POST", "/operator/ticket", key=TENANT_KEY)[0] == 403
    status, headers, _ = call(server, "POST", "/operator/login", body=f"key={TENANT_KEY}",
                              content_type="application/x-www-form-urlencoded")
    assert status == 403 and "Set-Cookie" not in headers


def test_the_form_opens_a_session_in_a_cookie_that_holds_no_key(server):
    status, headers, _ = call(server, "POST", "/operator/login", body=f"key={ADMIN_KEY}",
                              content_type="application/x-www-form-urlencoded")
    assert status == 303 and headers["Location"] == "/operator"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/operator" in cookie
    assert ADMIN_KEY not in cookie
    session = cookie.split(";")[0]
    status, _, page = call(server, "GET", "/operator", cookie=session)
    assert status == 200 and "docs-tenant-05" in page and "Sign out" in page
    assert call(server, "GET", "/operator", cookie=session.split("=")[0] + "=forged")[0] == 401
    assert call(server, "POST", "/operator/logout", cookie=session)[0] == 303
    assert call(server, "GET", "/operator", cookie=session)[0] == 401


def test_a_ticket_opens_one_session_once(server):
    path = ticket_url(server).split(str(server.gateway.port), 1)[1]
    assert ADMIN_KEY not in path
    status, headers, _ = call(server, "GET", path)
    assert status == 303 and "SameSite=Strict" in headers["Set-Cookie"]
    assert call(server, "GET", path)[0] == 401  # used
    assert call(server, "POST", "/operator/ticket")[0] == 401  # only for a key in the header


def test_names_that_callers_chose_are_escaped(server):
    _, _, page = call(server, "GET", "/operator", key=ADMIN_KEY)
    assert HOSTILE_TENANT not in page and HOSTILE_CATEGORY not in page
    assert "&lt;script&gt;alert(&quot;tenant&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_looking_wakes_no_tenant(server):
    docs = server.db.collection("docs")
    call(server, "GET", "/operator", key=ADMIN_KEY)
    call(server, "GET", "/operator/data.json", key=ADMIN_KEY)
    assert docs.tenant_state("docs-tenant-05") == "inactive" and docs.tenant_state("docs-tenant-09") == "offloaded"


def test_in_headless_chromium(server, browser, tmp_path):
    dom = browse(ticket_url(server))
    for shown in ("docs", "images", "docs-tenant-05", "finance", "code", "Sign out"):
        assert shown in dom, shown
    shot = tmp_path / "page.png"
    browse(ticket_url(server), screenshot=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    refused = browse(f"http://127.0.0.1:{server.gateway.port}/operator")  # no session: the form only
    assert "admin key is needed" in refused and "docs-tenant" not in refused


def test_a_missing_chromium_is_a_failure_naming_make_system(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="make system"):
        chromium()


def test_the_session_cookie_is_secure_under_tls(server):
    from aiohttp import web

    from curator_server.operator_page import COOKIE, OperatorPage

    page = OperatorPage(server.db, server.keys, server.metrics, None, secure=True)
    response = web.Response()
    page._open_session(server.keys.principals()[0], response)
    morsel = response.cookies[COOKIE]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Strict"


def test_a_server_without_a_model_serves_the_page_and_answers_v1_with_503(tmp_path):
    """--http-port without [cache.upstream]: the operator's page still has its port; /v1 says why not."""
    from curator_server.app import CuratorServer, ServerConfig
    from curator_server.gateway import GatewayConfig
    from tests.conftest import keys_file

    keys = keys_file(tmp_path / "keys.toml", {"ops": (ADMIN_KEY, None), "app": (TENANT_KEY, ["alice"])})
    bare = CuratorServer(ServerConfig(port=0, keys=keys, gateway=GatewayConfig(0))).start()
    try:
        bare.db.create_collection("docs", dim=4).insert([1], np.ones((1, 4)), tenant="alice")
        status, _, page = call(bare, "GET", "/operator", key=ADMIN_KEY)
        assert status == 200 and "docs" in page
        assert call(bare, "GET", "/v1/models")[0] == 401  # a stranger learns nothing, not even that
        status, _, text = call(bare, "POST", "/v1/chat/completions", key=TENANT_KEY, content_type="application/json",
                               body=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        assert status == 503 and json.loads(text)["error"]["code"] == "no_upstream"
        assert call(bare, "GET", "/v1/models", key=TENANT_KEY)[0] == 503
    finally:
        bare.stop()
