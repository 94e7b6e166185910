"""OpenAI's chat-completions shapes for the HTTP gateway (server/gateway.py), as plain functions
over dicts and bytes: error bodies, which requests the cache may answer and what keys their
entries, the cache controls of a request (Cache-Control, LiteLLM's `cache` object), a cached
answer as a `chat.completion` or as `chat.completion.chunk` server-sent events, and an
incremental reader of an upstream's event stream that says whether it finished whole.

Must never: do I/O, or import the HTTP stack (the gateway's tests of these shapes need none).
"""

import json
import math
import re
from dataclasses import dataclass

from curator.cache.upstream import STORABLE_FINISH

DONE = b"data: [DONE]\n\n"
PIECE_CHARS = 64  # characters of a cached answer per replayed chunk

# OpenAI's error types by status (its API answers these shapes; clients read `type` and `code`)
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
                429: "requests", 502: "server_error", 503: "server_error", 504: "server_error"}
# what the gateway leaves out of the key of an entry: how the answer travels, not what it is
_TRANSPORT_FIELDS = ("messages", "stream", "stream_options", "cache", "user")
# requests whose answer is not one text: tool calls, several choices, log-probabilities, audio
_UNCACHEABLE_FIELDS = ("tools", "functions", "tool_choice", "function_call", "logprobs", "top_logprobs", "audio",
                       "modalities", "prediction")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_MAX_AGE = re.compile(r"\d{1,10}")


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error" if status >= 500
                                                                  else "invalid_request_error"),
                      "param": param, "code": code}}


class BadRequest(ValueError):
    """A request the gateway cannot take as written (400), naming the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Controls:
    """What a request asks of the cache."""

    lookup: bool = True             # no-cache: skip the lookup (the answer then refreshes the entry)
    store: bool = True              # no-store: do not store the answer
    max_age: float | None = None    # accept only entries at most this many seconds old
    ttl: float | None = None        # LiteLLM's cache.ttl: the stored entry expires sooner than its category's


def controls(cache_control: str | None, cache: object = None) -> Controls:
    """The controls of a request's Cache-Control header and its body's LiteLLM `cache` object
    (`{"no-cache": true, "no-store": true, "ttl": 60, "s-maxage": 30}`); either may ask, the
    stricter wins. Unknown Cache-Control directives are ignored, as HTTP caches ignore them."""
    lookup, store, max_age, ttl = True, True, None, None
    for directive in (cache_control or "").split(","):
        name, _, value = directive.strip().partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "no-cache":
            lookup = False
        elif name == "no-store":
            store = False
        elif name == "max-age":
            if not _MAX_AGE.fullmatch(value):
                raise BadRequest(f"Cache-Control max-age must be a whole number of seconds, got {value!r}",
                                 "Cache-Control")
            max_age = _min(max_age, float(value))
    if cache is not None:
        if not isinstance(cache, dict):
            raise BadRequest("cache must be an object such as {\"no-cache\": true, \"ttl\": 60}", "cache")
        unknown = sorted(set(cache) - {"no-cache", "no-store", "ttl", "s-maxage"})
        if unknown:
            raise BadRequest(f"unknown cache control(s) {unknown}; allowed: no-cache, no-store, ttl, s-maxage "
                             "(the tenant comes from the API key, so there is no namespace)", "cache")
        for name in ("no-cache", "no-store"):
            if not isinstance(cache.get(name, False), bool):
                raise BadRequest(f"cache.{name} must be true or false, got {cache[name]!r}", "cache")
        lookup = lookup and not cache.get("no-cache", False)
        store = store and not cache.get("no-store", False)
        ttl = _seconds(cache.get("ttl"), "cache.ttl", zero_ok=False)
        max_age = _min(max_age, _seconds(cache.get("s-maxage"), "cache.s-maxage", zero_ok=True))
    return Controls(lookup, store, max_age, ttl)


def _seconds(value, name: str, zero_ok: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not (value >= 0 if zero_ok else value > 0):
        raise BadRequest(f"{name} must be a number of seconds {'>= 0' if zero_ok else '> 0'}, got {value!r}", "cache")
    return float(value)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def chat_request(body: object) -> tuple[list[dict], dict, str | None]:
    """(the messages as the cache renders them, the params that key the entry, None) for a request
    the cache may answer, or ([], {}, why not) for one it passes through uncached (BYPASS)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model must be a non-empty string", "model")
    for name in _UNCACHEABLE_FIELDS:
        if body.get(name) not in (None, False, [], {}):
            return [], {}, f"{name} given"
    if body.get("n", 1) != 1:
        return [], {}, "n other than 1"
    rendered = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object with a role and content", "messages")
        role = _ROLES.get(message.get("role"))
        if role is None or not isinstance(message.get("content"), str) or message.get("tool_calls"):
            return [], {}, f"a message of role {str(message.get('role'))[:20]!r} or content other than text"
        rendered.append({"role": role, "content": message["content"]})
    params = {name: value for name, value in body.items() if name not in _TRANSPORT_FIELDS}
    return rendered, params, None


def upstream_body(body: dict) -> bytes:
    """The request as the upstream gets it: LiteLLM's cache controls are the gateway's, not the model's."""
    return json.dumps({name: value for name, value in body.items() if name != "cache"}).encode()


def answer_of(body: object) -> tuple[str, dict] | None:
    """(the answer's text, what to keep beside it) of an upstream's whole chat.completion, or None
    when it is not one storable answer (an error, tool calls, several choices, cut short)."""
    try:
        (choice,) = body["choices"]
        message = choice["message"]
        finish = choice.get("finish_reason") or "stop"
    except (TypeError, KeyError, ValueError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("content"), str) or message.get("tool_calls") \
            or finish not in STORABLE_FINISH:
        return None
    return message["content"], _kept(body.get("model"), finish, body.get("usage"))


def _kept(model, finish: str, usage) -> dict:
    kept = {"finish_reason": finish}
    if isinstance(model, str):
        kept["model"] = model[:200]
    if isinstance(usage, dict):
        kept["usage"] = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    return kept


def completion(answer: str, extra: dict | None, *, ident: str, model: str, created: int) -> dict:
    """A cached answer as the upstream's chat.completion: its model, finish reason and usage as
    stored (the tokens the answer cost when the model made it)."""
    extra = extra or {}
    body = {"id": ident, "object": "chat.completion", "created": created, "model": extra.get("model", model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": extra.get("finish_reason", "stop"), "logprobs": None}]}
    if "usage" in extra:
        body["usage"] = extra["usage"]
    return body


def replay(answer: str, extra: dict | None, *, ident: str, model: str, created: int, include_usage: bool) -> bytes:
    """A cached answer as the server-sent events of a streamed one: the role, the text in pieces,
    the finish reason, the usage when the request asked for it (`stream_options.include_usage`),
    then [DONE]."""
    extra = extra or {}
    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": extra.get("model", model)}

    def event(choices, **more):
        return b"data: " + json.dumps({**head, "choices": choices, **more}, separators=(",", ":")).encode() + b"\n\n"

    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [event([{"index": 0, "delta": {"content": answer[i:i + PIECE_CHARS]}, "finish_reason": None}])
               for i in range(0, len(answer), PIECE_CHARS)]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": extra.get("finish_reason", "stop")}]))
    if include_usage and "usage" in extra:
        events.append(event([], usage=extra["usage"]))
    return b"".join(events) + DONE


class StreamReader:
    """Reads an upstream's server-sent events as they arrive: `feed(bytes)` returns the whole
    events received so far (each with its blank line) to relay, and keeps the answer's text, finish
    reason, model and usage. `whole` only once [DONE] came after a storable finish reason and
    nothing else (an error event, tool calls, another choice) made the answer unfit to store;
    `limit` characters at most are kept (past it the answer is relayed but not stored)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.finish = self.model = self.usage = None
        self.done = False
        self.fit = True
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        events = []
        while True:
            end = self._pending.find(b"\n\n")
            cut = 2
            if end < 0:
                end, cut = self._pending.find(b"\r\n\r\n"), 4
                if end < 0:
                    break
            event, self._pending = self._pending[:end + cut], self._pending[end + cut:]
            self._read(event)
            events.append(event)
        return events

    def rest(self) -> bytes:
        """What arrived after the last whole event (relayed as is when the stream ends)."""
        rest, self._pending = self._pending, b""
        return rest

    @property
    def whole(self) -> bool:
        return self.done and self.fit and self.finish in STORABLE_FINISH

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def kept(self) -> dict:
        return _kept(self.model, self.finish, self.usage)

    def _read(self, event: bytes) -> None:
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            if self.done:
                self.fit = False  # anything after [DONE] is not an answer we understand
                continue
            try:
                chunk = json.loads(data)
                self._chunk(chunk)
            except (ValueError, TypeError, KeyError, AttributeError):
                self.fit = False

    def _chunk(self, chunk: dict) -> None:
        if "error" in chunk:
            self.fit = False
            return
        self.model = chunk.get("model", self.model)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk["choices"]:
            if choice.get("index", 0) != 0:
                self.fit = False
                continue
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                self.fit = False
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.size += len(content)
                if self.size > self.limit:
                    self.fit = False
                else:
                    self.parts.append(content)
            self.finish = choice.get("finish_reason") or self.finish
