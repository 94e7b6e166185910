"""The gRPC server: the engine of `curator` behind the contract of `proto/`.

It adapts requests to the same `Database` API that embedded users call, takes each caller's
tenants from its API key, enforces the configured limits, and exposes health, reflection and
Prometheus metrics. It holds no index logic of its own.
"""

from curator_proto.tcp import prefer_classic_tcp

prefer_classic_tcp()  # before grpc is first imported (see curator_proto/tcp.py)
