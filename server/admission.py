"""Admission: which calls may take one of the server's worker threads, decided before any does.

grpcio's blocking server runs server interceptors on its polling thread, as a call's headers
arrive (`_find_method_handler`), and only then hands the call to its thread pool; for a method
with a unary request the worker then waits for the request's body. So a caller that sends
headers and no body held a worker for as long as it liked, before its key was ever checked.
`Admission` checks the key in the interceptor, from the headers alone:

- a call without a known key is answered UNAUTHENTICATED by a handler that never reads the
  request (a request-streaming one: grpcio hands it the request iterator without waiting),
  so its worker is free again at once, whatever the client sends or withholds;
- a key may have at most `per_key` calls in flight (admitted and not yet finished, search
  streams included); beyond that a call is refused RESOURCE_EXHAUSTED, saying the limit, so
  one tenant's slow or half-open calls cannot take every worker from the others. Health and
  reflection need no key; their calls share one such allowance;
- a key over its rate of reads or writes per second (`rates.py`: a token bucket, O(1)) is refused
  RESOURCE_EXHAUSTED naming the limit, with `retry-after` in the trailing metadata.

The cap on all calls in flight is grpcio's own `maximum_concurrent_rpcs`, refused on the
polling thread without a worker. In open mode (no key file) every caller is one and the same
admin, so only that global cap applies: there is no one to be fair between.

Must never: block or do work proportional to a request here (this runs on the thread that
serves every connection's network events), or read a request's body before its key is known.
"""

import collections
import threading

import grpc
from prometheus_client import CollectorRegistry, Counter

from curator.errors import CuratorError, ResourceExhaustedError, UnauthenticatedError

from .auth import KeyRing, Principal
from .rates import Rates, kind_of
from .service import abort

PUBLIC = Principal("public services (health, reflection)")  # who keyless calls to them count as


class Admission(grpc.ServerInterceptor):
    def __init__(self, keys: KeyRing, per_key: int, public_services=(), registry: CollectorRegistry | None = None,
                 rates: Rates | None = None):
        self.keys, self.per_key, self.rates = keys, per_key, rates  # per_key 0: no per-key limit
        self.public = frozenset(public_services)
        self._in_flight: dict[Principal, int] = {}
        self._lock = threading.Lock()
        # Finished calls are queued here and counted off under the lock by the next admission: a
        # finished call may be noticed by the garbage collector (below), which must not take a lock.
        self._finished: collections.deque[Principal] = collections.deque()
        self.refused = None if registry is None else Counter(
            "curator_refused", "calls refused before reaching a worker's handler, by reason "
            "(unauthenticated, key_limit, rate_limit)", ["reason"], registry=registry)

    def intercept_service(self, continuation, handler_call_details):
        if self.keys.open:
            return continuation(handler_call_details)
        service = (handler_call_details.method or "").lstrip("/").partition("/")[0]  # "/service/Method"
        if service in self.public:
            who = PUBLIC
        else:
            try:
                who = self.keys.principal_of(handler_call_details.invocation_metadata)
            except UnauthenticatedError as error:
                return self._refusal(error, "unauthenticated")
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        if getattr(behavior, "experimental_non_blocking", False) or getattr(behavior, "experimental_thread_pool", None):
            return handler  # answers by callbacks or on its own threads (health's Watch): holds no worker
        ticket = self._admit(who)
        if ticket is None:
            return self._refusal(ResourceExhaustedError(
                f"key {who.name!r} has {self.per_key} calls in flight, its limit (max_calls_per_key="
                f"{self.per_key}); wait for one to finish"), "key_limit")
        kind = kind_of(handler_call_details.method) if self.rates is not None and who is not PUBLIC else None
        if kind is not None:
            wait = self.rates.take(who, kind)
            if wait:
                ticket.release()
                return self._refusal(self.rates.refusal(who, kind, wait), "rate_limit")
        return _holding(handler, ticket)

    def in_flight(self, who: Principal) -> int:
        """Calls of `who` admitted and not yet finished."""
        with self._lock:
            self._count_finished()
            return self._in_flight.get(who, 0)

    def _admit(self, who: Principal) -> "_Ticket | None":
        with self._lock:
            self._count_finished()
            n = self._in_flight.get(who, 0)
            if self.per_key and n >= self.per_key:
                return None
            self._in_flight[who] = n + 1
        return _Ticket(self._finished, who)

    def _count_finished(self) -> None:
        while self._finished:
            who = self._finished.popleft()
            n = self._in_flight[who] - 1
            if n:
                self._in_flight[who] = n
            else:
                del self._in_flight[who]  # keys that come and go leave nothing behind

    def _refusal(self, error: CuratorError, reason: str) -> grpc.RpcMethodHandler:
        if self.refused is not None:
            self.refused.labels(reason).inc()

        def refuse(requests, context):
            abort(context, error)  # without iterating `requests`: the worker never waits for the body

        # Request-streaming whatever the method is: grpcio reads a unary request's body before
        # the handler runs (measured: a unary refusal held its worker while the client withheld
        # the body; this kind frees it at once). The reply kind does not matter: there is none.
        return grpc.stream_unary_rpc_method_handler(refuse)


class _Ticket:
    """One admitted call's place in its key's count, given back once: when its handler finishes,
    or, for a call grpcio dropped without running it (cancelled before its body arrived, or over
    `maximum_concurrent_rpcs`, which grpcio checks after the interceptors), when the handler and
    so this ticket are garbage."""

    __slots__ = ("_finished", "who")

    def __init__(self, finished: collections.deque, who: Principal):
        self._finished, self.who = finished, who

    def release(self) -> None:
        finished, self._finished = self._finished, None
        if finished is not None:
            finished.append(self.who)  # deque.append is atomic: no lock, safe from a finaliser

    __del__ = release


def _holding(handler: grpc.RpcMethodHandler, ticket: _Ticket) -> grpc.RpcMethodHandler:
    """The handler, giving its ticket back when it has finished (for a streamed reply, when the
    stream ends, however it ends: an error, a cancelled call, or grpcio dropping it)."""
    if handler.request_streaming:
        make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else \
            grpc.stream_unary_rpc_method_handler
        inner = handler.stream_stream or handler.stream_unary
    else:
        make = grpc.unary_stream_rpc_method_handler if handler.response_streaming else \
            grpc.unary_unary_rpc_method_handler
        inner = handler.unary_stream or handler.unary_unary

    if handler.response_streaming:
        def behavior(request, context):
            try:
                yield from inner(request, context)
            finally:
                ticket.release()
    else:
        def behavior(request, context):
            try:
                return inner(request, context)
            finally:
                ticket.release()

    return make(behavior, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
