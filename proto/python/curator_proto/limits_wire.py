"""Tenant quotas and key rates on the wire (service Limits), shared by the server and the SDKs.

A limit's value travels in an `optional` field: in a reply, unset is unlimited; in a change, unset
leaves the limit as it is and -1 makes it unlimited (None on either side of the wire).
"""

from curator.errors import InvalidArgumentError
from curator.quotas import LIMITS, Quota, TenantQuota, Usage
from curator_proto.v1 import curator_pb2 as pb

RATES = ("reads_per_second", "writes_per_second", "burst")
UNLIMITED = -1


def limits_to_wire(limits: dict, changes: bool = False) -> pb.QuotaLimits:
    """Limit -> value (None: unlimited) as a message; with `changes`, None travels as -1."""
    message = pb.QuotaLimits()
    for limit, value in limits.items():
        if limit not in LIMITS:
            raise InvalidArgumentError(f"unknown quota limit {limit!r}; allowed: {', '.join(LIMITS)}")
        if value is not None:
            setattr(message, limit, value)
        elif changes:
            setattr(message, limit, UNLIMITED)
    return message


def changes_from_wire(message: pb.QuotaLimits) -> dict:
    """The limits a SetQuota changes: those set, -1 as None (the engine checks the rest)."""
    return {limit: (None if getattr(message, limit) == UNLIMITED else getattr(message, limit))
            for limit in LIMITS if message.HasField(limit)}


def quota_to_wire(report: TenantQuota) -> pb.QuotaReply:
    return pb.QuotaReply(tenant=report.tenant or "", quota=limits_to_wire(report.quota.as_dict()),
                         usage=pb.QuotaUsage(**{limit: getattr(report.usage, limit) for limit in LIMITS}))


def quota_from_wire(reply: pb.QuotaReply) -> TenantQuota:
    quota = Quota(**{limit: getattr(reply.quota, limit) if reply.quota.HasField(limit) else None for limit in LIMITS})
    return TenantQuota(reply.tenant or None, quota, Usage(**{limit: getattr(reply.usage, limit) for limit in LIMITS}))


def rates_to_wire(name: str, rates: dict, changes: bool = False) -> pb.KeyRates:
    """Rate -> value (None: unlimited, or the default burst) as a message; with `changes`, None travels as -1."""
    message = pb.KeyRates(name=name)
    for rate, value in rates.items():
        if rate not in RATES:
            raise InvalidArgumentError(f"unknown key rate {rate!r}; allowed: {', '.join(RATES)}")
        if changes and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                              or not value > 0):
            raise InvalidArgumentError(f"{rate} must be a number above 0, or None (unlimited; for burst, one "
                                       f"second's worth); got {value!r}")
        if value is not None:
            setattr(message, rate, value)
        elif changes:
            setattr(message, rate, UNLIMITED)
    return message


def rate_changes_from_wire(message: pb.KeyRates) -> dict:
    return {rate: (None if getattr(message, rate) == UNLIMITED else getattr(message, rate))
            for rate in RATES if message.HasField(rate)}


def rates_from_wire(message: pb.KeyRates) -> dict:
    return {rate: getattr(message, rate) if message.HasField(rate) else None for rate in RATES}
