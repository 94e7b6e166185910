"""The Python SDK: `curator.connect("host:port", api_key=...)` returns a Database with the same
methods and return types as `curator.open(...)`, over gRPC."""

from curator_proto.tcp import prefer_classic_tcp

prefer_classic_tcp()  # before grpc is first imported (see curator_proto/tcp.py)

from .remote import RemoteCollection, RemoteDatabase, connect  # noqa: E402

__all__ = ["connect", "RemoteDatabase", "RemoteCollection"]
