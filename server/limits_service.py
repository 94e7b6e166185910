"""Tenant quotas and key rates over gRPC (service Limits): each RPC checks the caller, unpacks,
calls the engine's quotas (`curator/quotas.py`) or the server's rates (`rates.py`), and packs the
answer. Setting either needs an admin key; a tenant key may read its own tenants' quotas and
usage, and any key its own rates."""

from curator_proto import limits_wire
from curator_proto.v1 import curator_pb2_grpc as rpc

from .rates import Rates
from .service import _Base, handler


class LimitsService(_Base, rpc.LimitsServicer):
    def __init__(self, db, keys, limits, rates: Rates):
        super().__init__(db, keys, limits)
        self.rates = rates

    @handler
    def SetQuota(self, request, principal):
        principal.require_admin("setting a quota")
        tenant = request.tenant or None
        self.db.set_quota(tenant, **limits_wire.changes_from_wire(request.changes))
        return limits_wire.quota_to_wire(self.db.quota(tenant))

    @handler
    def GetQuota(self, request, principal):
        if request.tenant:  # the default quota (no tenant) is no one's secret
            principal.require_tenant(request.tenant)
        return limits_wire.quota_to_wire(self.db.quota(request.tenant or None))

    @handler
    def SetKeyRates(self, request, principal):
        principal.require_admin("setting a key's rates")
        rates = self.rates.set(request.name, limits_wire.rate_changes_from_wire(request.changes))
        return limits_wire.rates_to_wire(request.name, rates)

    @handler
    def GetKeyRates(self, request, principal):
        name = request.name or principal.name
        if name != principal.name:
            principal.require_admin("reading another key's rates")
        return limits_wire.rates_to_wire(name, self.rates.of(name))
