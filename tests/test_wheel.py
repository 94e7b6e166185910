"""The package as a user installs it: `python -m build` makes an sdist and a wheel of this checkout;
the wheel installs into a fresh venv with its dependencies from the package index; and from a
directory outside the checkout the README's commands work: `curator --version` (the version of
curator/__init__.py), `curator keygen`, `curator loadtest --help` (and a run without the loadtest
extra says which extra to install; with it, a short run against a server it starts itself),
`curator serve` reached with the SDK and stopped by SIGTERM, the embedded API in memory and on a
data directory, and `curator export` / `curator import` copying that directory's collection.

About 60-70 s on 2 cores with pip's cache warm: most of it installing numpy, faiss, numba, grpcio
and the loadtest extra (GloVe), and numba compiling in the fresh venv. The first run on a machine
also downloads them; pip keeps them in its cache (~/.cache/pip) for the next."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import curator
from curator_loadtest.server import free_port

ROOT = Path(__file__).resolve().parent.parent


def run(command, cwd, *, env, timeout=300, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's bin directory, a directory outside the checkout, the environment to run in)."""
    work = tmp_path_factory.mktemp("wheel")
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(ROOT)], cwd=work, timeout=600, env=env)
    wheels = list((work / "dist").glob("curator_db-*.whl"))
    sdists = list((work / "dist").glob("curator_db-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    assert wheels[0].name.startswith(f"curator_db-{curator.__version__}-")
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for module in ("curator/cache/engine.py", "curator/integrations/langchain.py", "curator/STORAGE.md",
                   "curator_server/cli.py", "curator_client/remote.py", "curator_proto/v1/curator_pb2.py",
                   "curator_loadtest/cli.py", "curator_loadtest/stand_in_llm.py"):
        assert module in names, module
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work, env=env)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])], cwd=work, timeout=900,
        env=env)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere, env


def test_the_commands_print_the_version_keys_and_the_harnesss_help(installed):
    bin_dir, elsewhere, env = installed
    assert run([str(bin_dir / "curator"), "--version"], elsewhere, env=env).stdout.strip() == \
        f"curator {curator.__version__}"
    keygen = run([str(bin_dir / "curator"), "keygen", "--name", "app", "--tenant", "alice"], elsewhere, env=env)
    assert re.search(r'sha256 = "[0-9a-f]{64}"', keygen.stdout) and 'tenants = ["alice"]' in keygen.stdout
    helped = run([str(bin_dir / "curator"), "loadtest", "--help"], elsewhere, env=env).stdout
    assert all(command in helped for command in ("run", "ramp", "soak"))
    assert "ramp" in run([str(bin_dir / "curator"), "loadtest", "ramp", "--help"], elsewhere, env=env).stdout
    without_extra = run([str(bin_dir / "curator"), "loadtest", "run", "--rate", "1", "--duration", "1"], elsewhere,
                        check=False, env=env)
    assert without_extra.returncode == 2 and "pip install 'curator-db[loadtest]'" in without_extra.stderr
    missing = run([str(bin_dir / "python"), "-c", "import curator.integrations.langchain"], elsewhere, check=False,
                  env=env)
    assert "pip install 'curator-db[langchain]'" in missing.stderr


def test_the_embedded_api_and_a_served_database_work_outside_the_checkout(installed):
    bin_dir, elsewhere, env = installed
    port = free_port()
    script = elsewhere / "use_curator.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        import numpy as np
        import curator

        assert "{ROOT}" not in curator.__file__, curator.__file__  # the installed package, not the checkout
        rng = np.random.default_rng(0)
        vectors = rng.random((200, 16), dtype=np.float32)
        with curator.open("./data") as db:
            col = db.create_collection("docs", dim=16, metric="cosine")
            col.insert(np.arange(200), vectors, tenant="alice", payloads=[{{"n": i}} for i in range(200)])
            col.grant([1, 2, 3], tenant="bob")
            ids, _ = col.search(vectors[7], k=5, tenant="alice", filter={{"n": {{"lt": 100}}}})
            assert ids[0] == 7, ids
            assert sorted(col.search(vectors[2], k=10, tenant="bob")[0].tolist()) == [1, 2, 3]
        with curator.open("./data") as db:  # reopened from disk
            assert db.collection("docs").count("alice") == 200
        deadline = time.monotonic() + 120
        remote = curator.connect("127.0.0.1:{port}", timeout=5, retries=0)
        while True:
            try:
                remote.list_collections()
                break
            except curator.CuratorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        col = remote.create_collection("docs", dim=16)
        col.insert(np.arange(50), vectors[:50], tenant="alice")
        assert col.search(vectors[9], k=1, tenant="alice")[0].tolist() == [9]
        remote.close()
        print("ok")
    """))
    server = subprocess.Popen([str(bin_dir / "curator"), "serve", "--data", str(elsewhere / "served"),
                               "--port", str(port)], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        used = run([str(bin_dir / "python"), str(script)], elsewhere, timeout=300, env=env)
        assert used.stdout.strip().endswith("ok")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            log, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            log, _ = server.communicate()
    assert server.returncode == 0, log[-3000:]
    assert f"serving on 127.0.0.1:{port}" in log
    curator_command = str(bin_dir / "curator")
    run([curator_command, "export", "--data", "./data", "--collection", "docs", "docs.jsonl"], elsewhere, env=env)
    run([curator_command, "import", "--data", "./copy", "--collection", "docs", "--metric", "cosine", "docs.jsonl"],
        elsewhere, env=env)
    check = ("import curator, numpy as np\n"
             "a, b = curator.open('./data').collection('docs'), curator.open('./copy').collection('docs')\n"
             "ids = np.arange(200)\n"
             "assert (a.get(ids) == b.get(ids)).all() and a.get_payloads(ids) == b.get_payloads(ids)\n"
             "assert b.tenants_of(2) == ['alice', 'bob'] and b.owned(ids, tenant='alice').all()\n"
             "print('same')")
    assert run([str(bin_dir / "python"), "-c", check], elsewhere, env=env).stdout.strip() == "same"


def test_the_load_harness_runs_from_the_wheel_with_its_extra(installed, tmp_path):
    bin_dir, elsewhere, env = installed
    wheel = next((elsewhere.parent / "dist").glob("curator_db-*.whl"))
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[loadtest]"], elsewhere, timeout=900,
        env=env)
    env = {**env, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # where an installed harness keeps its data sets
    done = run([str(bin_dir / "curator"), "loadtest", "run", "--dataset", "zipf", "--vectors", "1000", "--tenants", "10",
                "--mix", "mixed", "--rate", "50", "--duration", "2", "--warmup", "0.5", "--workers", "1",
                "--upstream-latency-ms", "5", "--verify", "--quiet", "--out", str(elsewhere / "load")], elsewhere,
               timeout=600, env=env)
    assert "read-back:" in done.stdout and (elsewhere / "load.json").exists() and (elsewhere / "load.png").exists()
    assert list((tmp_path / "cache" / "curator" / "data").glob("zipf_tenants-*.npz"))


def test_the_version_is_written_in_one_place():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "curator.__version__"}
    from curator_server.app import VERSION

    assert VERSION == curator.__version__
