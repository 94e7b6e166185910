"""API keys and what each caller may do.

Keys live in a TOML file, stored as SHA-256 digests (an API key is a long random secret, so a
plain digest is enough to keep a stolen file from yielding usable keys):

    [[keys]]
    name = "alice-app"
    sha256 = "…"            # `curator keygen --tenant alice` prints a new key and this entry
    tenants = ["alice"]

    [[keys]]
    name = "ops"
    sha256 = "…"
    admin = true

With no key file the server runs in open mode (every caller is admin), which it logs loudly.
"""

import hashlib
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from curator.errors import PermissionDeniedError, UnauthenticatedError


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False
    tenants: frozenset = field(default_factory=frozenset)

    def may_act_for(self, tenant: str) -> bool:
        return self.admin or tenant in self.tenants

    def require_tenant(self, tenant: str) -> None:
        if not self.may_act_for(tenant):
            raise PermissionDeniedError(f"key {self.name!r} may not act for tenant {tenant!r}; "
                                        f"it may act for {sorted(self.tenants)}")

    def require_admin(self, action: str) -> None:
        if not self.admin:
            raise PermissionDeniedError(f"{action} needs an admin key; key {self.name!r} is bound to tenants")


OPEN = Principal("open mode", admin=True)


class KeyRing:
    def __init__(self, entries: list[dict] | None):
        self.open = entries is None
        self._by_digest = {}
        for entry in entries or []:
            if not entry.get("admin") and not entry.get("tenants"):
                raise ValueError(f"key {entry.get('name')!r} has neither admin = true nor tenants")
            self._by_digest[entry["sha256"]] = Principal(
                entry.get("name", "unnamed"), bool(entry.get("admin")), frozenset(entry.get("tenants", ())))

    @classmethod
    def load(cls, path: str | None) -> "KeyRing":
        if path is None:
            return cls(None)
        with Path(path).open("rb") as f:
            return cls(tomllib.load(f).get("keys", []))

    def principal(self, context: grpc.ServicerContext) -> Principal:
        return self.principal_of(context.invocation_metadata())

    def principal_of(self, metadata) -> Principal:
        """The caller whose call carries this metadata; cheap enough for grpcio's polling thread."""
        if self.open:
            return OPEN
        header = dict(metadata or ()).get("authorization", "")
        key = header[7:] if header.startswith("Bearer ") else ""
        if not key:
            raise UnauthenticatedError("no API key: send metadata 'authorization: Bearer <key>'")
        principal = self._by_digest.get(digest_of(key))  # a digest lookup reveals nothing of other keys
        if principal is None:
            raise UnauthenticatedError("unknown API key")
        return principal


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "cur_" + secrets.token_urlsafe(32)
