"""Each semantic cache method as a `Call` (request + how to read the reply), shared by the
blocking and asyncio SDKs, as `calls.py` is for collections."""

import json

from curator.cache.api import Completion
from curator.cache.policy import Policy
from curator.errors import InvalidArgumentError
from curator_proto import cache_wire, wire
from curator_proto.v1 import curator_pb2 as pb

from .calls import Call


def lookup(tenant, prompt, embedding, category, model_settings, embedding_model) -> Call:
    request = pb.CacheLookupRequest(tenant=tenant, prompt=cache_wire.prompt_to_wire(prompt, embedding, embedding_model),
                                    category=category or "", model_settings_json=cache_wire.settings_to_wire(model_settings))
    return Call("cache", "Lookup", request, idempotent=True, parse=cache_wire.lookup_from_wire)


def store(tenant, prompt, answer, embedding, category, model_settings, embedding_model) -> Call:
    request = pb.CacheStoreRequest(tenant=tenant, prompt=cache_wire.prompt_to_wire(prompt, embedding, embedding_model),
                                   answer=answer, category=category or "",
                                   model_settings_json=cache_wire.settings_to_wire(model_settings))
    return Call("cache", "Store", request, idempotent=False, parse=lambda reply: reply.entry_id)


def _completion(reply) -> Completion:
    return Completion(reply.answer, reply.cached, cache_wire.lookup_from_wire(reply.lookup), reply.entry_id,
                      reply.upstream_seconds, reply.shared, reply.finish_reason)


def complete(tenant, messages, category, params, embedding, embedding_model) -> Call:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidArgumentError("messages must be a list of {role, content}")
    request = pb.CacheCompleteRequest(
        tenant=tenant, category=category or "", params_json=cache_wire.settings_to_wire(params),
        embedding_model=embedding_model or "",
        messages=[pb.ChatMessage(role=str(m.get("role", "")), content=str(m.get("content", ""))) for m in messages])
    if embedding is not None:
        request.embedding.CopyFrom(wire.pack(embedding))
    return Call("cache", "Complete", request, idempotent=False, parse=_completion)


def invalidate(tenant, category) -> Call:
    return Call("cache", "Invalidate", pb.CacheInvalidateRequest(tenant=tenant, category=category or ""),
                idempotent=True, parse=lambda reply: reply.count)


def feedback(tenant, entry_id, correct) -> Call:
    return Call("cache", "Feedback", pb.CacheFeedbackRequest(tenant=tenant, entry_id=entry_id, correct=correct),
                idempotent=False)


def set_policy(category, tenant, changes) -> Call:
    request = pb.SetCachePolicyRequest(category=category or "", tenant=tenant or "",
                                       changes=cache_wire.policy_to_wire(changes))
    return Call("cache", "SetPolicy", request, idempotent=True, parse=_whole_policy)


def _whole_policy(message) -> dict:
    return Policy().merged(cache_wire.policy_from_wire(message)).as_dict()


def policy(category, tenant) -> Call:
    def parse(reply):
        return {"configured": _whole_policy(reply.configured), "effective": _whole_policy(reply.effective),
                "pressure": reply.pressure}

    return Call("cache", "GetPolicy", pb.GetCachePolicyRequest(category=category, tenant=tenant or ""),
                idempotent=True, parse=parse)


def train_classifier(examples, min_similarity) -> Call:
    if not isinstance(examples, dict):
        raise InvalidArgumentError("examples must map each category to a list of example prompts")
    request = pb.TrainClassifierRequest(
        examples={c: pb.StringList(values=list(p)) for c, p in examples.items()}, min_similarity=min_similarity)
    return Call("cache", "TrainClassifier", request, idempotent=True)


def classify(prompt, embedding) -> Call:
    return Call("cache", "Classify", pb.ClassifyRequest(prompt=cache_wire.prompt_to_wire(prompt, embedding, None)),
                idempotent=True, parse=lambda reply: (reply.category, reply.similarity))


def stats(tenant) -> Call:
    return Call("cache", "CacheStats", pb.CacheStatsRequest(tenant=tenant or ""), idempotent=True,
                parse=lambda reply: json.loads(reply.stats_json))
