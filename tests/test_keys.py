"""API keys as a security boundary: the keys file is read strictly, `curator keygen` cannot be
talked into writing an entry it was not asked for, keys reach only their collections and see only
their tenants' counts, snapshots stay in their directory, data stays private to its owner, and
open mode is refused beyond loopback."""

import stat
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curator
from curator_server.app import CuratorServer, InsecureConfigError, ServerConfig, is_loopback
from curator_server.auth import KeyRing, KeysFileError, digest_of, key_entry, parse_keys, toml_string
from curator_server.cli import main as cli

DIGEST = digest_of("some key")
OTHER = digest_of("another key")


def entry(**fields) -> str:
    lines = ["[[keys]]"] + [f"{name} = {value}" for name, value in fields.items()]
    return "\n".join(lines) + "\n"


REFUSED = [  # (keys file, what the refusal says)
    (entry(name='"a"', sha256=f'"{DIGEST}"', admin='"false"'), "admin must be a boolean"),
    (entry(name='"a"', sha256=f'"{DIGEST}"', tenants='"alice"'), "tenants must be a array"),
    (entry(name='"a"', sha256=f'"{DIGEST}"', tenants='["alice", 3]'), "non-empty array of non-empty strings"),
    (entry(name='"a"', sha256=f'"{DIGEST}"', tenants="[]"), "non-empty array"),
    (entry(name='"a"', sha256=f'"{DIGEST}"', tenants='["a"]', collections='"docs"'), "collections must be a array"),
    (entry(name='"a"', sha256=f'"{DIGEST}"', tenants='["a"]', admni="true"), "unknown field 'admni'"),
    (entry(name='"a"', sha256=f'"{DIGEST}"'), "neither admin = true nor tenants"),
    (entry(name='"a"', sha256=f'"{DIGEST}"', admin="true", tenants='["a"]'), "not both"),
    (entry(name='"a"', sha256='"abc"', admin="true"), "64 lowercase hex digits"),
    (entry(name='"a"', sha256=f'"{DIGEST.upper()}"', admin="true"), "64 lowercase hex digits"),
    (entry(sha256=f'"{DIGEST}"', admin="true"), "name is required"),
    (entry(name='"a"', admin="true"), "sha256 is required"),
    (entry(name='"a"', sha256=f'"{DIGEST}"', admin="true") + entry(name='"b"', sha256=f'"{DIGEST}"', admin="true"),
     "also that of key 'a'"),
    ('keys = "x"\n', "array of tables"),
    ("[server]\nport = 1\n", "unknown top-level entries ['server']"),
    ("[[keys]\n", "not valid TOML"),
]


@pytest.mark.parametrize("text, words", REFUSED, ids=[w for _, w in REFUSED])
def test_the_keys_file_is_parsed_strictly(text, words):
    with pytest.raises(KeysFileError) as raised:
        parse_keys(text, "keys.toml")
    assert words in str(raised.value), str(raised.value)


def test_a_refusal_names_the_entry_and_its_line():
    text = (entry(name='"ok"', sha256=f'"{OTHER}"', admin="true") + "\n# a comment\n"
            + entry(name='"bad"', sha256=f'"{DIGEST}"', admin='"no"'))
    with pytest.raises(KeysFileError) as raised:
        parse_keys(text, "keys.toml")
    assert "key entry 2 (line 9)" in str(raised.value), str(raised.value)


def test_a_well_formed_file_gives_each_key_its_rights():
    text = (entry(name='"ops"', sha256=f'"{OTHER}"', admin="true")
            + entry(name='"app"', sha256=f'"{DIGEST}"', tenants='["alice", "bob"]', collections='["docs"]'))
    keys = parse_keys(text)
    app, ops = keys[DIGEST], keys[OTHER]
    assert (app.admin, app.tenants, app.collections) == (False, {"alice", "bob"}, {"docs"})
    assert (ops.admin, ops.collections) == (True, None)
    assert app.may_reach("docs") and not app.may_reach("other") and ops.may_reach("other")


@settings(max_examples=200, deadline=None)
@given(name=st.text(), tenants=st.lists(st.text(min_size=1), min_size=1, max_size=3),
       collections=st.lists(st.text(min_size=1), max_size=3))
def test_keygen_entries_read_back_as_written_whatever_the_names(name, tenants, collections):
    """A name is data, never TOML: no quote, newline or control character in it can close its
    string and add fields (an admin = true) or entries of its own."""
    name = name or "n"
    text = key_entry(name, "the key", tenants, False, collections)
    document = tomllib.loads(text)
    assert document == {"keys": [{"name": name, "sha256": digest_of("the key"), "tenants": tenants,
                                  **({"collections": collections} if collections else {})}]}
    (principal,) = parse_keys(text).values()
    assert not principal.admin and principal.tenants == frozenset(tenants)


def test_keygen_appends_to_a_keys_file_readable_by_its_owner_only(tmp_path, capsys):
    keys = tmp_path / "keys.toml"
    assert cli(["keygen", "--name", 'evil"\nadmin = true\n#', "--tenant", "alice", "--keys", str(keys)]) == 0
    assert cli(["keygen", "--name", "ops", "--admin", "--keys", str(keys)]) == 0
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    ring = KeyRing.load(str(keys))
    principals = sorted(ring._by_digest.values(), key=lambda p: p.name)
    assert [(p.name, p.admin) for p in principals] == [('evil"\nadmin = true\n#', False), ("ops", True)]
    printed = [line for line in capsys.readouterr().err.splitlines() if "the key" in line]
    assert len(printed) == 2 and all(line.split()[-1].startswith("cur_") for line in printed)


def test_toml_string_escapes_what_toml_requires():
    assert toml_string('a"b\\c\n\x7f\x00') == '"a\\"b\\\\c\\u000a\\u007f\\u0000"'


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("127.0.0.2", True), ("0.0.0.0", False),
                                            ("", False), ("::", False), ("10.0.0.1", False),
                                            ("example.com", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_open_mode_is_refused_beyond_loopback_unless_asked_for(caplog):
    with pytest.raises(InsecureConfigError, match="--insecure-open"):
        CuratorServer(ServerConfig(host="0.0.0.0", port=0))
    server = CuratorServer(ServerConfig(host="0.0.0.0", port=0, insecure_open=True))
    server.stop()
    assert "OPEN MODE" in caplog.text


def test_curator_serve_says_why_it_refuses_open_mode_beyond_loopback():
    done = subprocess.run([sys.executable, "-m", "curator_server", "serve", "--data", ":memory:", "--host",
                           "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--insecure-open" in done.stderr, done.stderr


def test_keys_without_tls_beyond_loopback_and_a_readable_keys_file_are_warned_about(tmp_path, caplog):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry(name='"ops"', sha256=f'"{DIGEST}"', admin="true"))
    keys.chmod(0o644)
    CuratorServer(ServerConfig(host="0.0.0.0", port=0, keys=str(keys))).stop()
    assert "clear text" in caplog.text and "chmod 600" in caplog.text


def test_data_directories_and_snapshots_are_private(tmp_path):
    db = curator.open(str(tmp_path / "data"))
    db.create_collection("c", dim=2).insert([1], np.ones((1, 2)), tenant="t")
    db.snapshot(str(tmp_path / "snap"))
    db.close()
    curator.restore(str(tmp_path / "snap"), str(tmp_path / "restored"))
    for name in ("data", "snap", "restored"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700, name


KEYS = {"scoped": "key-scoped-0123456789", "wide": "key-wide-0123456789", "admin": "key-admin-0123456789"}


@pytest.fixture
def scoped(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry(name='"scoped"', sha256=f'"{digest_of(KEYS["scoped"])}"', tenants='["alice"]',
                          collections='["docs"]')
                    + entry(name='"wide"', sha256=f'"{digest_of(KEYS["wide"])}"', tenants='["alice", "carol"]')
                    + entry(name='"ops"', sha256=f'"{digest_of(KEYS["admin"])}"', admin="true"))
    server = CuratorServer(ServerConfig(data=str(tmp_path / "data"), port=0, keys=str(keys),
                                        snapshots=str(tmp_path / "snapshots"))).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"])
    for name in ("docs", "secret"):
        col = admin.create_collection(name, dim=4)
        col.insert(np.arange(10), np.random.default_rng(0).random((10, 4)), tenant="alice")
        col.insert(np.arange(10, 40), np.random.default_rng(1).random((30, 4)), tenant="bob")
    yield server, admin, tmp_path
    admin.close()
    server.stop()


def test_a_key_scoped_to_collections_finds_no_other(scoped):
    server, admin, _ = scoped
    db = curator.connect(server.address, api_key=KEYS["scoped"])
    assert db.list_collections() == ["docs"]
    assert db.collection("docs").count(tenant="alice") == 10
    with pytest.raises(curator.NotFoundError) as raised:
        db.collection("nonexistent").count(tenant="alice")
    missing = str(raised.value).replace("nonexistent", "NAME")
    for call in (lambda: db.collection("secret").count(tenant="alice"),
                 lambda: db.collection("secret").search(np.ones(4), k=3, tenant="alice"),
                 lambda: db.collection("secret").insert([99], np.ones((1, 4)), tenant="alice")):
        with pytest.raises(curator.NotFoundError) as raised:  # exactly as if it did not exist
            call()
        assert str(raised.value).replace("secret", "NAME") == missing
    db.close()


def test_describe_gives_a_tenant_key_its_own_tenants_counts(scoped):
    server, admin, _ = scoped
    wide = curator.connect(server.address, api_key=KEYS["wide"])
    assert wide.collection("docs").stats() == {"vectors": 10, "tenants": 1}  # alice's; carol has none
    assert admin.collection("docs").stats() == {"vectors": 40, "tenants": 2}
    wide.close()


@pytest.mark.parametrize("path", ["/tmp/escaped", "../escaped", "a/../../escaped", ""])
def test_a_snapshot_path_is_confined_to_the_snapshots_directory(scoped, path):
    _, admin, tmp_path = scoped
    with pytest.raises(curator.InvalidArgumentError):
        admin.snapshot(path)
    assert not (tmp_path / "escaped").exists()


def test_a_snapshot_through_a_link_out_of_the_directory_is_refused(scoped):
    _, admin, tmp_path = scoped
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    (tmp_path / "snapshots" / "out").symlink_to(tmp_path)
    with pytest.raises(curator.InvalidArgumentError, match="outside"):
        admin.snapshot("out/escaped")
    assert not (tmp_path / "escaped").exists()


def test_a_snapshot_lands_in_the_snapshots_directory_and_restores(scoped):
    _, admin, tmp_path = scoped
    admin.snapshot("nightly/1")
    target = tmp_path / "snapshots" / "nightly" / "1"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    curator.restore(str(target), str(tmp_path / "back"))
    with curator.open(str(tmp_path / "back")) as db:
        assert db.collection("docs").count() == 40


def test_a_tenant_label_comes_only_from_calls_the_key_may_make(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry(name='"app"', sha256=f'"{digest_of(KEYS["scoped"])}"', tenants='["alice"]')
                    + entry(name='"ops"', sha256=f'"{digest_of(KEYS["admin"])}"', admin="true"))
    server = CuratorServer(ServerConfig(port=0, keys=str(keys), tenant_metrics_top=10)).start()
    try:
        with curator.connect(server.address, api_key=KEYS["admin"]) as admin:
            admin.create_collection("docs", dim=4).insert([1], np.ones((1, 4)), tenant="alice")
        with curator.connect(server.address, api_key=KEYS["scoped"]) as db:
            col = db.collection("docs")
            col.search(np.ones(4), k=1, tenant="alice")
            for tenant in ("mallory", "eve"):
                with pytest.raises(curator.PermissionDeniedError):
                    col.search(np.ones(4), k=1, tenant=tenant)
                with pytest.raises(curator.PermissionDeniedError):
                    col.count(tenant=tenant)
        with curator.connect(server.address, api_key="not a key") as stranger:
            with pytest.raises(curator.UnauthenticatedError):
                stranger.collection("docs").count(tenant="intruder")
        labels = {tenant for tenant, _ in server.metrics.tenants.snapshot()}
        assert "alice" in labels and not labels & {"mallory", "eve", "intruder"}, labels
    finally:
        server.stop()
