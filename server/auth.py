"""API keys and what each caller may do.

Keys live in a TOML file, stored as SHA-256 digests (an API key is a long random secret, so a
plain digest is enough to keep a stolen file from yielding usable keys):

    [[keys]]
    name = "alice-app"
    sha256 = "…"            # `curator keygen --tenant alice` prints a new key and this entry
    tenants = ["alice"]
    collections = ["docs"]  # optional: the collections the key may reach (default: all)

    reads_per_second = 50   # optional: calls per second of each kind (server/rates.py)
    writes_per_second = 5
    burst = 20              # optional: the most calls of each kind at once (default: one second's worth)

    [[keys]]
    name = "ops"
    sha256 = "…"
    admin = true

The file is parsed strictly, because a lenient reading of a security file fails open: every
field has one type (`admin = "false"` is refused, not read as true; `tenants = "alice"` is
refused, not read as five one-letter tenants), unknown fields and duplicate digests are refused,
and each refusal names the entry and its line. Rates belong to a key's name (keys sharing one, as
an old and a new key while rotating, share its buckets), so entries of one name must not disagree
about them. With no key file the server runs in open mode
(every caller is admin), which it logs loudly.
"""

import hashlib
import math
import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

import grpc

from curator.errors import PermissionDeniedError, UnauthenticatedError


class KeysFileError(ValueError):
    """The keys file cannot be used as written; the message names the entry and its line."""


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False
    tenants: frozenset = frozenset()
    collections: frozenset | None = None  # None: every collection
    # calls per second (None: unlimited) and bucket size (None: one second's worth), from the keys
    # file; rates set through the API override them (server/rates.py)
    reads_per_second: float | None = None
    writes_per_second: float | None = None
    burst: float | None = None

    def may_act_for(self, tenant: str) -> bool:
        return self.admin or tenant in self.tenants

    def may_reach(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require_tenant(self, tenant: str) -> None:
        if not self.may_act_for(tenant):
            raise PermissionDeniedError(f"key {self.name!r} may not act for tenant {tenant!r}; "
                                        f"it may act for {sorted(self.tenants)}")

    def require_collection(self, collection: str, action: str) -> None:
        if not self.may_reach(collection):
            raise PermissionDeniedError(f"key {self.name!r} may not {action} collection {collection!r}; it may "
                                        f"reach {sorted(self.collections)}")

    def require_admin(self, action: str) -> None:
        if not self.admin:
            raise PermissionDeniedError(f"{action} needs an admin key; key {self.name!r} is bound to tenants")


OPEN = Principal("open mode", admin=True)

_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"name": str, "sha256": str, "admin": bool, "tenants": list, "collections": list,
           "reads_per_second": (int, float), "writes_per_second": (int, float), "burst": (int, float)}
RATE_FIELDS = ("reads_per_second", "writes_per_second", "burst")
MAX_RATE = 1e9  # calls per second (or in a burst): beyond it a rate means nothing


class KeyRing:
    def __init__(self, principals: dict[str, Principal] | None):
        self.open = principals is None
        self._by_digest = principals or {}

    @classmethod
    def load(cls, path: str | None) -> "KeyRing":
        if path is None:
            return cls(None)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise KeysFileError(f"keys file {path}: {error}") from None
        return cls(parse_keys(text, str(path)))

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

    def principals(self) -> list[Principal]:
        return list(self._by_digest.values())


def parse_keys(text: str, source: str = "keys file") -> dict[str, Principal]:
    """Digest -> Principal from the text of a keys file; KeysFileError names what is wrong and where."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise KeysFileError(f"{source} is not valid TOML: {error}") from None
    extra = set(document) - {"keys"}
    if extra:
        raise KeysFileError(f"{source}: unknown top-level entries {sorted(extra)}; only [[keys]] tables are allowed")
    entries = document.get("keys", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise KeysFileError(f"{source}: 'keys' must be an array of tables ([[keys]])")
    principals: dict[str, Principal] = {}
    names: dict[str, str] = {}
    rates: dict[str, tuple] = {}  # key name -> its rates and where they were first given
    for number, entry in enumerate(entries):
        where = f"{source}, key entry {number + 1} ({_line_of(text, entry, number)})"
        principal, digest = _principal(entry, where)
        if digest in principals:
            raise KeysFileError(f"{where}: its sha256 is also that of key {names[digest]!r}; each key's digest "
                                "must appear once")
        mine = tuple(getattr(principal, field) for field in RATE_FIELDS)
        first = rates.setdefault(principal.name, (mine, where))
        if first[0] != mine:
            raise KeysFileError(f"{where}: its rates differ from those of another entry named {principal.name!r} "
                                f"({first[1]}); rates belong to a key's name, so entries of one name must agree")
        principals[digest], names[digest] = principal, principal.name
    return principals


def _principal(entry: dict, where: str) -> tuple[Principal, str]:
    for field, value in entry.items():
        kind = _FIELDS.get(field)
        if kind is None:
            raise KeysFileError(f"{where}: unknown field {field!r}; allowed: {', '.join(_FIELDS)}")
        if type(value) not in (kind if isinstance(kind, tuple) else (kind,)):
            raise KeysFileError(f"{where}: {field} must be a {_TOML_TYPE[kind]}, got {value!r}")
    for field in RATE_FIELDS:
        problem = rate_problem(field, entry.get(field))
        if problem:
            raise KeysFileError(f"{where}: {problem}")
    for field in ("name", "sha256"):
        if not entry.get(field):
            raise KeysFileError(f"{where}: {field} is required")
    digest = entry["sha256"]
    if not _DIGEST.fullmatch(digest):
        raise KeysFileError(f"{where}: sha256 must be 64 lowercase hex digits (`curator keygen` writes it)")
    lists = {}
    for field in ("tenants", "collections"):
        values = entry.get(field)
        if values is not None and not (values and all(isinstance(v, str) and v for v in values)):
            raise KeysFileError(f"{where}: {field} must be a non-empty array of non-empty strings")
        lists[field] = None if values is None else frozenset(values)
    admin = entry.get("admin", False)
    if admin and lists["tenants"]:
        raise KeysFileError(f"{where}: a key is either admin = true or bound to tenants, not both")
    if not admin and not lists["tenants"]:
        raise KeysFileError(f"{where}: the key has neither admin = true nor tenants")
    rates = {field: float(entry[field]) for field in RATE_FIELDS if field in entry}
    return Principal(entry["name"], admin, lists["tenants"] or frozenset(), lists["collections"], **rates), digest


def rate_problem(field: str, value) -> str | None:
    """What is wrong with a rate's value (None: unset, or nothing wrong)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{field} must be a finite number, got {value!r}"
    low = 1 if field == "burst" else 0
    if not (value >= low if field == "burst" else value > low) or value > MAX_RATE:
        bound = "at least 1" if field == "burst" else "above 0"
        return f"{field} must be {bound} and at most {MAX_RATE:g}, got {value!r}"
    return None


_TOML_TYPE = {str: "string", bool: "boolean (true or false, unquoted)", list: "array", (int, float): "number"}


def _line_of(text: str, entry: dict, number: int) -> str:
    """Where an entry is: the line of its digest, or of its [[keys]] header."""
    digest = entry.get("sha256")
    lines = text.splitlines()
    if isinstance(digest, str) and digest:
        for i, line in enumerate(lines):
            if digest in line:
                return f"line {i + 1}"
    headers = [i for i, line in enumerate(lines) if line.strip().replace(" ", "") == "[[keys]]"]
    return f"line {headers[number] + 1}" if number < len(headers) else "line unknown"


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "cur_" + secrets.token_urlsafe(32)


def toml_string(value: str) -> str:
    """`value` as a TOML basic string: quotes, backslashes and control characters escaped, so a
    name cannot close its string and write entries of its own."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def key_entry(name: str, key: str, tenants: list[str], admin: bool, collections: list[str] | None = None) -> str:
    """The keys-file entry for a new key (its digest, never the key)."""
    lines = ["[[keys]]", f"name = {toml_string(name)}", f'sha256 = "{digest_of(key)}"']
    if admin:
        lines.append("admin = true")
    else:
        lines.append("tenants = [" + ", ".join(toml_string(t) for t in tenants) + "]")
    if collections:
        lines.append("collections = [" + ", ".join(toml_string(c) for c in collections) + "]")
    return "\n".join(lines) + "\n"


def append_entry(path: str, entry: str) -> None:
    """Add an entry to a keys file, creating it readable by its owner only (0600)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as f:
        f.write(("\n" if f.tell() else "") + entry)


def readable_by_others(path: str) -> bool:
    return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
