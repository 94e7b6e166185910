"""A client in another language reaches the service through proto/ alone: Node with @grpc/grpc-js
creates a collection, upserts and searches (tests/node; `make test` runs `npm ci` there)."""

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from curator_server.app import CuratorServer, ServerConfig

NODE_DIR = Path(__file__).resolve().parent / "node"
pytestmark = pytest.mark.skipif(shutil.which("node") is None or not (NODE_DIR / "node_modules").exists(),
                                reason="node or tests/node/node_modules missing (make test runs npm ci)")


@pytest.mark.parametrize("kind", ["server", "cluster"])
def test_node_client_creates_upserts_and_searches(request, tmp_path, kind):
    """On one server, and through a cluster front (the same contract)."""
    cluster = request.getfixturevalue("curator_cluster") if kind == "cluster" else None
    server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, ray="given" if cluster else None),
                           cluster=cluster).start()
    try:
        result = subprocess.run(["node", str(NODE_DIR / "client.js"), server.address], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        assert answer["ids"] == [11, 10, 12]
        assert answer["distances"][0] == pytest.approx(0.02, abs=1e-5)
        assert answer["unknownTenantCode"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert server.db.collection("from-node").tenants_of(13) == ["js"]
    finally:
        if cluster is not None:
            server.db.drop_collection("from-node")
        server.stop()
