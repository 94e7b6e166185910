"""The semantic cache over gRPC: each RPC checks the caller's tenant, unpacks, calls `db.cache`,
packs the answer. A tenant key acts only for its own tenants; changing policies or the
classifier, and stats of every tenant, need an admin key."""

import json
import math

from curator.errors import InvalidArgumentError
from curator_proto import cache_wire, wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc

from .service import _Base, handler


class CacheService(_Base, rpc.CacheServicer):
    @property
    def cache(self):
        return self.db.cache

    @handler
    def Lookup(self, request, principal):
        principal.require_tenant(request.tenant)
        text, embedding, model = cache_wire.prompt_from_wire(request.prompt)
        lookup = self.cache.lookup(request.tenant, text, embedding=embedding, category=request.category or None,
                                   model_settings=cache_wire.settings_from_wire(request.model_settings_json),
                                   embedding_model=model)
        return cache_wire.lookup_to_wire(lookup)

    @handler
    def Store(self, request, principal):
        principal.require_tenant(request.tenant)
        text, embedding, model = cache_wire.prompt_from_wire(request.prompt)
        entry = self.cache.store(request.tenant, text, request.answer, embedding=embedding,
                                 category=request.category or None, embedding_model=model,
                                 model_settings=cache_wire.settings_from_wire(request.model_settings_json))
        return pb.CacheStoreReply(entry_id=entry)

    @handler
    def Complete(self, request, principal):
        principal.require_tenant(request.tenant)
        embedding = None
        if request.HasField("embedding"):
            embedding = wire.unpack(request.embedding, "prompt embedding")[0]
        completion = self.cache.complete(
            request.tenant, [{"role": m.role, "content": m.content} for m in request.messages],
            category=request.category or None, embedding=embedding, embedding_model=request.embedding_model or None,
            params=cache_wire.settings_from_wire(request.params_json, "params_json"))
        return pb.CacheCompleteReply(
            answer=completion.answer, cached=completion.cached, lookup=cache_wire.lookup_to_wire(completion.lookup),
            entry_id=completion.entry_id, upstream_seconds=completion.upstream_seconds, shared=completion.shared,
            finish_reason=completion.finish_reason)

    @handler
    def Invalidate(self, request, principal):
        principal.require_tenant(request.tenant)
        return pb.CacheCountReply(count=self.cache.invalidate(request.tenant, request.category or None))

    @handler
    def Feedback(self, request, principal):
        principal.require_tenant(request.tenant)
        self.cache.feedback(request.tenant, request.entry_id, correct=request.correct)
        return pb.Empty()

    @handler
    def SetPolicy(self, request, principal):
        principal.require_admin("changing a cache policy")
        changes = cache_wire.policy_from_wire(request.changes)
        policy = self.cache.set_policy(request.category or None, tenant=request.tenant or None, **changes)
        return cache_wire.policy_to_wire(policy)

    @handler
    def GetPolicy(self, request, principal):
        if request.tenant:
            principal.require_tenant(request.tenant)
        policy = self.cache.policy(request.category, tenant=request.tenant or None)
        return pb.CachePolicyReply(configured=cache_wire.policy_to_wire(policy["configured"]),
                                   effective=cache_wire.policy_to_wire(policy["effective"]),
                                   pressure=policy["pressure"])

    @handler
    def TrainClassifier(self, request, principal):
        principal.require_admin("training the cache's category classifier")
        if not math.isfinite(request.min_similarity):
            raise InvalidArgumentError("min_similarity must be a finite number")
        self.cache.train_classifier({c: list(p.values) for c, p in request.examples.items()},
                                    min_similarity=request.min_similarity)
        return pb.Empty()

    @handler
    def Classify(self, request, principal):
        text, embedding, _ = cache_wire.prompt_from_wire(request.prompt)
        category, similarity = self.cache.classify(text, embedding=embedding)
        return pb.ClassifyReply(category=category, similarity=similarity)

    @handler
    def CacheStats(self, request, principal):
        if request.tenant:
            principal.require_tenant(request.tenant)
        else:
            principal.require_admin("cache stats of every tenant (name a tenant)")
        return pb.CacheStatsReply(stats_json=json.dumps(self.cache.stats(request.tenant or None)))
