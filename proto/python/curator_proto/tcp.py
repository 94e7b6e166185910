"""gRPC's TCP stack for Curator's server and SDK processes: the classic (iomgr) one.

grpcio >= 1.6x moves TCP onto its EventEngine, which costs Python callers more per message on
loopback: here a Python echo over an open bidirectional stream took 0.165 ms p50 on the classic
stack against 0.298 ms on the EventEngine (server and client pinned to a core each; 0.199 against
0.355 unpinned), and a streamed Curator search 0.46 against 0.51-0.57 ms. The stack is chosen
once per process, when gRPC's core starts, from the GRPC_EXPERIMENTS environment variable; so
the server and the SDK ask for the classic one before they first import grpc.

They leave it alone when the process already set GRPC_EXPERIMENTS, when grpc is already
imported (too late to matter, and the process chose), or when CURATOR_GRPC_TCP=event_engine.
"""

import os
import sys

CLASSIC_TCP = "-event_engine_client,-event_engine_listener"


def prefer_classic_tcp() -> bool:
    """Ask gRPC for its classic TCP stack if nobody chose yet; whether it was asked."""
    if "grpc" in sys.modules or "GRPC_EXPERIMENTS" in os.environ:
        return False
    if os.environ.get("CURATOR_GRPC_TCP", "classic") == "event_engine":
        return False
    os.environ["GRPC_EXPERIMENTS"] = CLASSIC_TCP
    return True
