"""The semantic cache's values on the wire, both directions: policies, prompts, lookups.

A policy's "none" values travel as sentinels (no_ttl, -1 for unbounded quotas, NaN for no floor
or ceiling) because proto3 has no null; a policy change sends only the fields it changes.
"""

import json
import math

from curator.cache.api import Lookup
from curator.errors import InvalidArgumentError
from curator_proto import wire
from curator_proto.v1 import curator_pb2 as pb

_PLAIN = ("min_similarity", "eviction", "cacheable", "ambiguity_margin", "guard", "relaxable", "auto_bypass")


def policy_to_wire(policy: dict) -> pb.CachePolicy:
    message = pb.CachePolicy(**{name: policy[name] for name in _PLAIN if name in policy})
    if "ttl" in policy:
        if policy["ttl"] is None:
            message.no_ttl = True
        else:
            message.ttl = policy["ttl"]
    for name in ("max_entries", "max_bytes"):
        if name in policy:
            setattr(message, name, -1 if policy[name] is None else policy[name])
    for name in ("min_similarity_floor", "ttl_ceiling"):
        if name in policy:
            setattr(message, name, math.nan if policy[name] is None else policy[name])
    return message


def policy_from_wire(message: pb.CachePolicy) -> dict:
    """The fields set in the message (a change, or a whole policy)."""
    policy = {name: getattr(message, name) for name in _PLAIN if message.HasField(name)}
    if message.HasField("no_ttl") and message.no_ttl:
        policy["ttl"] = None
    elif message.HasField("ttl"):
        policy["ttl"] = message.ttl
    for name in ("max_entries", "max_bytes"):
        if message.HasField(name):
            value = getattr(message, name)
            policy[name] = None if value == -1 else value
    for name in ("min_similarity_floor", "ttl_ceiling"):
        if message.HasField(name):
            value = getattr(message, name)
            policy[name] = None if math.isnan(value) else value
    return policy


def prompt_to_wire(text, embedding, embedding_model) -> pb.Prompt:
    message = pb.Prompt(text=text or "", embedding_model=embedding_model or "")
    if embedding is not None:
        message.embedding.CopyFrom(wire.pack(embedding))
    return message


def prompt_from_wire(message: pb.Prompt) -> tuple[str | None, object, str | None]:
    embedding = None
    if message.HasField("embedding"):
        rows = wire.unpack(message.embedding, "prompt embedding")
        if rows.shape[0] != 1:
            raise InvalidArgumentError(f"a prompt has one embedding, got {rows.shape[0]} rows")
        embedding = rows[0]
    return message.text or None, embedding, message.embedding_model or None


def settings_to_wire(settings: dict | None) -> str:
    return json.dumps(settings, sort_keys=True) if settings else ""


def settings_from_wire(text: str, what: str = "model_settings_json") -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"{what} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object")
    return value


def lookup_to_wire(lookup: Lookup) -> pb.CacheLookupReply:
    message = pb.CacheLookupReply(
        hit=lookup.hit, reason=lookup.reason, category=lookup.category, category_source=lookup.category_source,
        threshold=lookup.threshold, answer=lookup.answer or "", entry_id=lookup.entry_id, relaxed=lookup.relaxed)
    if lookup.similarity is not None:
        message.similarity = lookup.similarity
    if lookup.cached_prompt is not None:
        message.cached_prompt = lookup.cached_prompt
    if lookup.age is not None:
        message.age_seconds = lookup.age
    if lookup.other_similarity is not None:
        message.other_similarity = lookup.other_similarity
    if lookup.why is not None:
        message.why = lookup.why
    if lookup.extra is not None:
        message.extra_json = json.dumps(lookup.extra)
    return message


def lookup_from_wire(message: pb.CacheLookupReply) -> Lookup:
    return Lookup(
        hit=message.hit, reason=message.reason, category=message.category, category_source=message.category_source,
        threshold=message.threshold,
        similarity=message.similarity if message.HasField("similarity") else None,
        answer=message.answer if message.hit else None,
        # an older server sends the prompt on hits only, as a plain string
        cached_prompt=message.cached_prompt if message.HasField("cached_prompt") or message.hit else None,
        age=message.age_seconds if message.HasField("age_seconds") else None,
        entry_id=message.entry_id, relaxed=message.relaxed,
        extra=json.loads(message.extra_json) if message.HasField("extra_json") else None,
        other_similarity=message.other_similarity if message.HasField("other_similarity") else None,
        why=message.why if message.HasField("why") else None)
