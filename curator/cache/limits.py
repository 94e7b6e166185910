"""What one tenant may make the semantic cache hold, over all its categories, and how large an
answer may be: the cache's own budget per tenant, configured once (`[cache.limits]`).

    [cache.limits]
    tenant_entries = 100_000        # entries per tenant, every category together
    tenant_bytes = 268_435_456      # their prompt + answer + embedding bytes (256 MiB)
    tenant_categories = 64          # categories in which a tenant holds entries at once
    answer_bytes = 1_048_576        # an answer's UTF-8 bytes (1 MiB); a larger one is never stored

A category's policy (`max_entries`, `max_bytes`) bounds one (tenant, category) and evicts to make
room; these bound the tenant's whole cache and refuse (ResourceExhaustedError naming the limit).
A tenant quota's `cache_entries` (`curator/quotas.py`, set by an admin per tenant or as the
default) replaces `tenant_entries` for the tenants it covers, in either direction.
Must never: depend on what another tenant holds.
"""

from dataclasses import asdict, dataclass, fields

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Limits:
    tenant_entries: int = 100_000
    tenant_bytes: int = 256 << 20
    tenant_categories: int = 64
    answer_bytes: int = 1 << 20

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 1 << 63:
                raise InvalidArgumentError(f"cache limit {field.name}={value!r}: expected an integer from 1 to "
                                           f"{(1 << 63) - 1}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "Limits":
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidArgumentError(f"unknown cache limit(s) {unknown}; known: "
                                       f"{', '.join(f.name for f in fields(cls))}")
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)
