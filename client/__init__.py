"""The Python SDK: `curator.connect("host:port", api_key=...)` returns a Database with the same
methods and return types as `curator.open(...)`, over gRPC."""

from .remote import RemoteCollection, RemoteDatabase, connect

__all__ = ["connect", "RemoteDatabase", "RemoteCollection"]
