"""Tenant quotas and key rates (service Limits) as `Call`s, shared by the blocking and asyncio SDKs."""

from curator import validate
from curator.quotas import checked_limits
from curator_proto import limits_wire
from curator_proto.v1 import curator_pb2 as pb

from .calls import Call


def _tenant(tenant) -> str:
    return "" if tenant is None else validate.name(tenant, "tenant")


def set_quota(tenant, limits: dict) -> Call:
    request = pb.SetQuotaRequest(tenant=_tenant(tenant), changes=limits_wire.limits_to_wire(checked_limits(limits),
                                                                                            changes=True))
    return Call("limits", "SetQuota", request, idempotent=True, parse=lambda reply: limits_wire.quota_from_wire(reply).quota)


def quota(tenant) -> Call:
    return Call("limits", "GetQuota", pb.QuotaRequest(tenant=_tenant(tenant)), idempotent=True,
                parse=limits_wire.quota_from_wire)


def set_key_rates(name, rates: dict) -> Call:
    request = pb.SetKeyRatesRequest(name=validate.name(name, "key name"),
                                    changes=limits_wire.rates_to_wire("", rates, changes=True))
    return Call("limits", "SetKeyRates", request, idempotent=True, parse=limits_wire.rates_from_wire)


def key_rates(name) -> Call:
    request = pb.KeyRatesRequest(name="" if name is None else validate.name(name, "key name"))
    return Call("limits", "GetKeyRates", request, idempotent=True, parse=limits_wire.rates_from_wire)
