"""Cache policies: how each category (optionally per tenant) may be cached, validated once.

A `Policy` is a plain frozen value. `Policies` resolves the policy of a (tenant, category):
the tenant's override of that category, over the category's policy, over the default one;
an override names only the fields it changes. Policies load from a config file (TOML or JSON)
and change at run time; every change is validated as a whole before it is applied.

Similarity is cosine similarity in [-1, 1] (1 = same direction); `min_similarity` 0 and 1 are
real values, never "unset". `ttl` and `ttl_ceiling` are seconds, None for no expiry.
"""

import dataclasses
import json
import math
import threading
import tomllib
from pathlib import Path

from ..errors import InvalidArgumentError

EVICTIONS = ("lru", "lfu")
DEFAULT_CATEGORY = "default"


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the cache may do with one category's prompts."""

    min_similarity: float = 0.9         # a hit needs cosine similarity >= this
    ttl: float | None = 86_400.0        # seconds an entry may be served; None: no expiry
    max_entries: int | None = None      # quota per tenant in this category; None: unbounded
    max_bytes: int | None = None        # quota of prompt + answer + embedding bytes
    eviction: str = "lru"               # which entry leaves first when over quota: lru | lfu
    cacheable: bool = True              # False: every lookup misses and nothing is stored
    ambiguity_margin: float = 0.0       # miss when an entry with another answer is this close to the best
    guard: bool = True                  # refuse hits whose numbers, dates, negation or names differ
    relaxable: bool = False             # may the threshold and TTL follow the upstream's load
    min_similarity_floor: float | None = None  # the lowest threshold under load (relaxable)
    ttl_ceiling: float | None = None    # the longest TTL under load (relaxable)
    auto_bypass: bool = False           # stop looking up when the hit rate does not pay for lookups

    def __post_init__(self):
        check_policy(self)

    def merged(self, changes: dict) -> "Policy":
        """This policy with some fields changed (validated)."""
        unknown = set(changes) - FIELDS
        if unknown:
            raise InvalidArgumentError(f"unknown policy field(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {field.name for field in dataclasses.fields(Policy)}


def check_policy(policy: Policy) -> None:
    """InvalidArgumentError naming the first field out of range and what is allowed."""
    def number(name, value, low, high, none_ok=False):
        if value is None and none_ok:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            allowed = f"a number in [{low}, {high}]" + (" or None" if none_ok else "")
            raise InvalidArgumentError(f"policy {name}={value!r} is out of range: expected {allowed}")

    def flag(name, value):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"policy {name}={value!r}: expected true or false")

    number("min_similarity", policy.min_similarity, -1.0, 1.0)
    number("ttl", policy.ttl, 0.0, math.inf, none_ok=True)
    number("ambiguity_margin", policy.ambiguity_margin, 0.0, 2.0)
    for name in ("max_entries", "max_bytes"):
        value = getattr(policy, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidArgumentError(f"policy {name}={value!r}: expected an integer >= 0 or None")
    if policy.eviction not in EVICTIONS:
        raise InvalidArgumentError(f"policy eviction={policy.eviction!r}: expected one of {', '.join(EVICTIONS)}")
    for name in ("cacheable", "guard", "relaxable", "auto_bypass"):
        flag(name, getattr(policy, name))
    number("min_similarity_floor", policy.min_similarity_floor, -1.0, policy.min_similarity, none_ok=True)
    if policy.ttl_ceiling is not None:
        low = policy.ttl if policy.ttl is not None else math.inf
        number("ttl_ceiling", policy.ttl_ceiling, low, math.inf)
    if policy.relaxable and policy.min_similarity_floor is None and policy.ttl_ceiling is None:
        raise InvalidArgumentError("a relaxable policy needs min_similarity_floor and/or ttl_ceiling "
                                   "(how far it may relax under load)")


def category_name(category: str) -> str:
    if not isinstance(category, str) or not category or len(category) > 128:
        raise InvalidArgumentError(f"category {category!r}: expected a non-empty string of at most 128 characters")
    return category


class Policies:
    """The default policy, per-category policies and per-tenant overrides; thread-safe."""

    def __init__(self, default: Policy | None = None):
        self._lock = threading.Lock()
        self._default = default or Policy()
        self._categories: dict[str, dict] = {}        # category -> changed fields
        self._tenants: dict[tuple[str, str], dict] = {}  # (tenant, category) -> changed fields
        self._resolved: dict[tuple[str, str], Policy] = {}  # memo of resolve(), emptied by every change
        self._named: frozenset | None = None  # memo of named_categories(), emptied by every change

    def resolve(self, tenant: str, category: str) -> Policy:
        key = (tenant, category)
        policy = self._resolved.get(key)
        if policy is not None:
            return policy
        with self._lock:
            changes = {**self._categories.get(category, {}), **self._tenants.get(key, {})}
            policy = self._default.merged(changes) if changes else self._default
            if len(self._resolved) < 100_000:
                self._resolved[key] = policy
            return policy

    def set(self, category: str | None, changes: dict, tenant: str | None = None) -> Policy:
        """Change the default (category None), a category, or a tenant's view of a category."""
        if not isinstance(changes, dict):
            raise InvalidArgumentError(f"policy changes must be a mapping of field -> value, got {type(changes).__name__}")
        with self._lock:
            if category is None:
                if tenant is not None:
                    raise InvalidArgumentError("a tenant override names its category")
                default = self._default.merged(changes)
                for fields in (*self._categories.values(), *self._tenants.values()):
                    default.merged(fields)  # every override must still be valid on the new default
                self._default = default
                self._resolved.clear()
                self._named = None
                return default
            category = category_name(category)
            key = (tenant, category)
            table, slot = (self._categories, category) if tenant is None else (self._tenants, key)
            merged = {**table.get(slot, {}), **changes}
            base = {} if tenant is None else self._categories.get(category, {})
            policy = self._default.merged({**base, **merged})  # validates the whole result
            table[slot] = merged
            self._resolved.clear()
            self._named = None
            return policy

    def named_categories(self) -> frozenset:
        """The categories an admin gave a policy of their own, or a tenant override (the same object
        until a policy changes)."""
        named = self._named
        if named is None:
            with self._lock:
                named = self._named = frozenset(self._categories) | frozenset(c for _, c in self._tenants)
        return named

    def reset(self, category: str, tenant: str | None = None) -> None:
        """Forget a category's policy (or a tenant's override of it)."""
        with self._lock:
            if tenant is None:
                self._categories.pop(category, None)
            else:
                self._tenants.pop((tenant, category), None)
            self._resolved.clear()
            self._named = None

    def as_dict(self) -> dict:
        """The whole configuration, as stored and as `load` reads it."""
        with self._lock:
            tenants: dict[str, dict] = {}
            for (tenant, category), fields in self._tenants.items():
                tenants.setdefault(tenant, {})[category] = dict(fields)
            return {"default": self._default.as_dict(),
                    "categories": {c: dict(f) for c, f in self._categories.items()},
                    "tenants": tenants}

    @classmethod
    def from_dict(cls, config: dict) -> "Policies":
        if not isinstance(config, dict):
            raise InvalidArgumentError("a cache policy config is a mapping with default, categories, tenants")
        unknown = set(config) - {"default", "categories", "tenants"}
        if unknown:
            raise InvalidArgumentError(f"unknown cache policy section(s) {sorted(unknown)}: "
                                       "expected default, categories, tenants")
        policies = cls(Policy().merged(config.get("default", {})))
        for category, fields in config.get("categories", {}).items():
            policies.set(category, fields)
        for tenant, categories in config.get("tenants", {}).items():
            for category, fields in categories.items():
                policies.set(category, fields, tenant=tenant)
        return policies

    @classmethod
    def load(cls, path) -> "Policies":
        """From a TOML or JSON file (see README: default / categories / tenants tables)."""
        path = Path(path)
        text = path.read_text()
        try:
            config = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as error:
            raise InvalidArgumentError(f"cannot read cache policies from {path}: {error}") from None
        return cls.from_dict(config.get("cache", config) if path.suffix != ".json" else config)
