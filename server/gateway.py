"""The OpenAI-compatible HTTP gateway: `curator serve --http-port PORT` serves `http://HOST:PORT/v1`
beside gRPC, the semantic cache in front of the upstream model of `--cache-config`, so that an
application keeps its OpenAI client and changes only `base_url`.

- `POST /v1/chat/completions`, whole or streamed (server-sent events ending with `[DONE]`), and
  `GET /v1/models` passed through. A hit is answered in the upstream's shape with the model, finish
  reason and usage stored with the answer; a streamed hit is replayed as chunks.
- The tenant comes from the bearer key (the keys file of gRPC): a key bound to one tenant is that
  tenant; one bound to several, or an admin key, names it in `X-Curator-Tenant`; open mode (no
  keys) has one tenant, `default`, unless the header names another. Never from the body.
- `X-Cache: HIT | SEMANTIC_HIT | MISS | BYPASS` (HIT: the very same prompt; SEMANTIC_HIT: a
  similar one; MISS: answered by the model and, unless told not to, stored; BYPASS: the cache was
  not consulted and nothing stored: a request it cannot answer, such as tool calls, a category not
  cacheable, no-cache with no-store), with `X-Cache-Similarity`, `X-Cache-Category`, `X-Cache-Age`
  and `Server-Timing`, on streamed answers too.
- Controls: `Cache-Control: no-cache` (skip the lookup; an answer stored replaces the prompt's entries),
  `no-store`, `max-age=N`; LiteLLM's body object `cache` (`no-cache`, `no-store`, `ttl`, `s-maxage`),
  removed before the request goes upstream; the category from `X-Cache-Category` or the classifier.
- A streamed miss is relayed event by event as it arrives and stored only once the upstream sent a
  finish reason and `[DONE]`, before `[DONE]` is relayed (so the client's next request can hit); a
  stream that breaks off is never stored and ends with an error event. Identical concurrent
  non-streamed misses make one upstream call.
- Upstream errors pass through with their status; the gateway's own refusals use OpenAI's error
  shape: 401 (key), 403 (tenant), 400, 413 (body over `max_body_bytes`), 429 (calls in flight, per key
  and in all, and the key's rate of writes, with Retry-After). Answers over `max_answer_bytes` are
  relayed but not stored.

Stack: aiohttp, server and upstream client both, on its own event loop in one thread beside grpcio's
server (see README, "The HTTP gateway"). The engine's blocking calls (embedding, lookup, store) run
on a small thread pool: one hop for a lookup, one more for a store.

Must never: take the tenant from the body; store an answer that did not arrive whole; send a
caller's key upstream; block the event loop on the engine.
"""

import asyncio
import json
import logging
import math
import secrets
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from curator import validate
from curator.errors import (InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError,
                            UpstreamError, UpstreamTimeoutError)

from curator.cache.policy import category_name

from . import openai_wire as wire
from .auth import OPEN, KeyRing, Principal
from .rates import READS, WRITES

log = logging.getLogger("curator.gateway")
DEFAULT_TENANT = "default"
TENANT_HEADER, CATEGORY_HEADER = "X-Curator-Tenant", "X-Cache-Category"
MAX_UPSTREAM_BYTES = 64 << 20  # a whole (not streamed) upstream answer the gateway holds at most
CHAT, MODELS = "/v1/chat/completions", "/v1/models"
_JSON = "application/json"


@dataclass
class GatewayConfig:
    port: int = 0                  # 0: pick a free port
    max_body_bytes: int = 4 << 20  # a request body; past it 413
    max_answer_bytes: int = 1 << 20  # an answer stored at most (larger ones are relayed, not stored)
    max_calls: int = 256           # requests in flight; past it 429
    max_calls_per_key: int = 32    # one key's requests in flight (0: no limit); past it 429
    workers: int = 4               # threads running the engine's calls


class Refusal(Exception):
    """An answer in OpenAI's error shape, from the gateway itself or an upstream's error passed on."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict | None = None, body: bytes | None = None):
        super().__init__(message)
        self.status, self.code, self.param, self.headers, self.body = status, code, param, headers or {}, body

    def response(self) -> web.Response:
        body = self.body or json.dumps(wire.error_body(self.status, str(self), code=self.code,
                                                       param=self.param)).encode()
        return web.Response(status=self.status, body=body, content_type=_JSON, headers=self.headers)


NO_MODEL = ("this server fronts no model: its HTTP port serves the operator's page only; give [cache.upstream] "
            "url in --cache-config for /v1")


def _upstream_url(upstream: dict | None) -> str | None:
    """The model's base URL, or None: the HTTP port then serves the operator's page, and /v1 answers 503."""
    return upstream["url"].rstrip("/") if upstream and upstream.get("url") else None


class Gateway:
    def __init__(self, cache, keys: KeyRing, rates, metrics, upstream: dict, config: GatewayConfig, host: str,
                 tls: tuple[str, str] | None = None):
        self.cache, self.keys, self.rates, self.metrics, self.config = cache, keys, rates, metrics, config
        self.host, self.tls = host, tls
        self.base_url = _upstream_url(upstream)
        upstream = upstream or {}
        self._timeout = float(upstream.get("timeout", 30.0))
        self._upstream_headers = {"Content-Type": _JSON}
        if upstream.get("api_key"):
            self._upstream_headers["Authorization"] = f"Bearer {upstream['api_key']}"
        self.port: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="curator-http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._calls = 0
        self._per_key: dict[str, int] = {}
        self._flights: dict[tuple, asyncio.Future] = {}
        self.pages: list = []  # more routes on this port: objects with install(app, run) (server/operator_page.py)

    # -- running beside grpcio ---------------------------------------------------------------------

    def start(self, grace_seconds: float = 10.0) -> "Gateway":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="curator-http", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(grace_seconds), self._loop).result(timeout=60)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            raise
        log.info("HTTP gateway on %s://%s:%s/v1 (upstream %s)", "https" if self.tls else "http", self.host, self.port,
                 self.base_url or "none: /v1 answers 503, the operator's page is served")
        return self

    async def _open(self, grace_seconds: float) -> None:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._observe])
        app.router.add_post(CHAT, self._chat)
        app.router.add_get(MODELS, self._models)
        for page in self.pages:
            page.install(app, self._run)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._timeout))
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=grace_seconds)
        await self._runner.setup()
        context = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
        await web.TCPSite(self._runner, self.host, self.config.port, ssl_context=context).start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to the grace period), close."""
        if self._loop is None or not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._executor.shutdown(wait=True)

    async def _close(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    # -- every request -------------------------------------------------------------------------------

    @web.middleware
    async def _observe(self, request: web.Request, handler):
        """Times and counts each request by route, status and X-Cache outcome; answers refusals
        and aiohttp's own (no such route, wrong method) in OpenAI's error shape."""
        start = time.perf_counter()
        response = None
        try:
            response = await handler(request)
        except Refusal as refusal:
            response = refusal.response()
        except web.HTTPException as error:  # no such route, a method it does not take
            response = Refusal(error.status, error.reason or "refused").response()
        except Exception:
            log.exception("HTTP gateway: %s %s failed", request.method, request.path)
            response = Refusal(500, "the gateway failed to answer; see its log").response()
        finally:
            route = request.path if request.path in (CHAT, MODELS) else "other"
            status = response.status if response is not None else 499  # cancelled: the gateway stopping
            outcome = response.headers.get("X-Cache", "") if response is not None else ""
            self.metrics.observe(route, status, outcome, time.perf_counter() - start)
        return response

    def _caller(self, request: web.Request) -> Principal:
        if self.keys.open:
            return OPEN
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Refusal(401, "no API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key")
        try:
            return self.keys.principal_of((("authorization", "Bearer " + key.strip()),))
        except UnauthenticatedError:
            raise Refusal(401, "unknown API key", code="invalid_api_key") from None

    def _tenant(self, request: web.Request, who: Principal) -> str:
        named = request.headers.get(TENANT_HEADER)
        if named is None:
            if self.keys.open:
                return DEFAULT_TENANT
            if not who.admin and len(who.tenants) == 1:
                return next(iter(who.tenants))
            raise Refusal(400, f"key {who.name!r} acts for {'any tenant' if who.admin else 'several tenants'}: "
                          f"name one in the {TENANT_HEADER} header", param=TENANT_HEADER)
        try:
            tenant = validate.name(named, "tenant")
            who.require_tenant(tenant)
        except InvalidArgumentError as error:
            raise Refusal(400, str(error), param=TENANT_HEADER) from None
        except PermissionDeniedError as error:
            raise Refusal(403, str(error), code="permission_denied", param=TENANT_HEADER) from None
        return tenant

    def _admit(self, who: Principal, kind: str) -> None:
        """Count the request in flight (refusing past the limits) and take it from the key's rate."""
        per_key = 0 if self.keys.open else self.config.max_calls_per_key
        if self._calls >= self.config.max_calls:
            raise Refusal(429, f"the gateway has {self._calls} requests in flight, its limit; retry later",
                          code="too_many_requests", headers={"Retry-After": "1"})
        if per_key and self._per_key.get(who.name, 0) >= per_key:
            raise Refusal(429, f"key {who.name!r} has {per_key} requests in flight, its limit; retry later",
                          code="too_many_requests", headers={"Retry-After": "1"})
        if not self.keys.open:
            try:
                self.rates.check(who, kind)
            except ResourceExhaustedError as error:
                raise Refusal(429, str(error), code="rate_limit_exceeded",
                              headers={"Retry-After": str(max(1, math.ceil(error.retry_after or 1)))}) from None
        self._calls += 1
        self._per_key[who.name] = self._per_key.get(who.name, 0) + 1

    def _release(self, who: Principal) -> None:
        self._calls -= 1
        left = self._per_key[who.name] - 1
        if left:
            self._per_key[who.name] = left
        else:
            del self._per_key[who.name]

    async def _json_body(self, request: web.Request) -> object:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refusal(413, f"request body of {request.content_length} bytes; at most {limit} allowed",
                          code="request_too_large")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refusal(413, f"request body over {limit} bytes, the most allowed", code="request_too_large") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise Refusal(400, "the request body is not JSON") from None

    async def _run(self, call, *args):
        return await self._loop.run_in_executor(self._executor, call, *args)

    # -- GET /v1/models ------------------------------------------------------------------------------

    def _model(self) -> None:
        if self.base_url is None:
            raise Refusal(503, NO_MODEL, code="no_upstream")

    async def _models(self, request: web.Request) -> web.Response:
        who = self._caller(request)
        self._model()
        self._admit(who, READS)
        try:
            async with self._session.get(f"{self.base_url}/models", headers=self._upstream_headers) as upstream:
                body = await _read_limited(upstream, MAX_UPSTREAM_BYTES)
                return _passed_on(upstream, body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise _unreachable(self.base_url, error) from None
        finally:
            self._release(who)

    # -- POST /v1/chat/completions -------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        who = self._caller(request)
        tenant = self._tenant(request, who)  # before the body: a stranger's request costs no read
        self._model()
        self._admit(who, WRITES)
        try:
            return await self._answer(request, tenant)
        finally:
            self._release(who)

    async def _answer(self, request: web.Request, tenant: str) -> web.StreamResponse:
        body = await self._json_body(request)
        try:
            messages, params, uncacheable = wire.chat_request(body)
            controls = wire.controls(request.headers.get("Cache-Control"), body.get("cache"))
        except wire.BadRequest as error:
            raise Refusal(400, str(error), param=error.param) from None
        stream = body.get("stream") is True
        category = request.headers.get(CATEGORY_HEADER) or None
        if category is not None:
            try:
                category = category_name(category)
            except InvalidArgumentError as error:
                raise Refusal(400, str(error), param=CATEGORY_HEADER) from None
        prompt = lookup = None
        timing = {}
        if uncacheable is None and (controls.lookup or controls.store):
            try:
                prompt, lookup, timing["lookup"] = await self._run(self._look, tenant, messages, params, category,
                                                                   controls)
            except (InvalidArgumentError, ResourceExhaustedError) as error:
                # nothing to match (only system messages, blank text) or too long to embed: the
                # model may still answer it, uncached
                log.debug("HTTP gateway: answering uncached: %s", error)
            except (UpstreamError, UpstreamTimeoutError) as error:  # the embedding endpoint failing
                log.warning("HTTP gateway: answering uncached: %s", error)
            if prompt is not None:
                timing = {"prompt": prompt.seconds, **timing}
        headers = {}
        if prompt is not None:
            headers["X-Cache-Category"] = prompt.category
        if lookup is not None and lookup.similarity is not None:
            headers["X-Cache-Similarity"] = f"{lookup.similarity:.4f}"
        if lookup is not None and lookup.hit:
            headers["X-Cache"] = "HIT" if lookup.cached_prompt == prompt.text else "SEMANTIC_HIT"
            headers["X-Cache-Age"] = str(int(lookup.age))
            headers["Server-Timing"] = _server_timing(timing)
            return await self._hit(request, body, lookup, headers, stream)
        # stored as complete() stores: unless told not to or the category is not cacheable (a
        # category bypassed for not paying keeps storing, so that its sampled lookups can hit)
        store = prompt is not None and controls.store and not (lookup is not None and lookup.reason == "not_cacheable")
        looked = lookup is not None and lookup.reason not in ("not_cacheable", "bypassed")
        headers["X-Cache"] = "MISS" if looked or (store and lookup is None) else "BYPASS"
        if stream:
            return await self._relay(request, body, prompt if store else None, controls, headers, timing)
        return await self._forward(body, prompt if store else None, controls, headers, timing)

    def _look(self, tenant, messages, params, category, controls: wire.Controls):
        """On a worker thread: the prompt (embedded, classified) and, unless no-cache, its lookup and its time."""
        prompt = self.cache.chat_prompt(tenant, messages, params=params, category=category)
        if not controls.lookup:
            return prompt, None, None
        start = time.perf_counter()
        return prompt, self.cache.lookup_chat(prompt, max_age=controls.max_age), time.perf_counter() - start

    async def _hit(self, request, body: dict, lookup, headers: dict, stream: bool) -> web.StreamResponse:
        ident, created, model = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), body["model"]
        if not stream:
            payload = wire.completion(lookup.answer, lookup.extra, ident=ident, model=model, created=created)
            return web.Response(body=json.dumps(payload).encode(), content_type=_JSON, headers=headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = wire.replay(lookup.answer, lookup.extra, ident=ident, model=model, created=created,
                             include_usage=include_usage)
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(events)
        await response.write_eof()
        return response

    async def _forward(self, body: dict, prompt, controls, headers: dict, timing: dict) -> web.Response:
        """A whole answer from the upstream, stored when it is one storable answer; identical
        concurrent misses (same tenant, category, settings and prompt) share one upstream call."""
        key = None
        if prompt is not None and controls.lookup:
            key = (prompt.tenant, prompt.category, prompt.model, prompt.settings, prompt.text)
            flight = self._flights.get(key)
            if flight is not None:
                status, data, upstream_headers, seconds = await asyncio.shield(flight)
                return _whole(status, data, upstream_headers, headers, {**timing, "upstream": seconds})
            flight = self._flights[key] = self._loop.create_future()
        try:
            outcome = await self._ask(body, prompt, controls)
        except BaseException as error:
            if key is not None:
                flight.set_result((503, None, {}, 0.0) if not isinstance(error, Refusal) else
                                  (error.status, error.response().body, {}, 0.0))
            raise
        else:
            if key is not None:
                flight.set_result(outcome)
        finally:
            if key is not None:
                del self._flights[key]
        status, data, upstream_headers, seconds = outcome
        return _whole(status, data, upstream_headers, headers, {**timing, "upstream": seconds})

    async def _ask(self, body: dict, prompt, controls) -> tuple[int, bytes, dict, float]:
        start = time.perf_counter()
        self.cache.load.started()
        seconds = None
        try:
            async with self._session.post(f"{self.base_url}/chat/completions", data=wire.upstream_body(body),
                                          headers=self._upstream_headers) as upstream:
                data = await _read_limited(upstream, MAX_UPSTREAM_BYTES)
                status, content_type = upstream.status, upstream.headers.get("Content-Type", _JSON)
            seconds = time.perf_counter() - start
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise _unreachable(self.base_url, error) from None
        finally:
            self.cache.load.finished(seconds)
        if prompt is not None:
            self.cache.economics.upstream(prompt.category, seconds)
            if status == 200:
                await self._store_whole(prompt, data, controls)
        return status, data, {"Content-Type": content_type}, seconds

    async def _store_whole(self, prompt, data: bytes, controls) -> None:
        try:
            answer = wire.answer_of(json.loads(data))
        except ValueError:
            answer = None
        if answer is not None and len(answer[0].encode()) <= self.config.max_answer_bytes:
            await self._run(self._store, prompt, answer[0], answer[1], controls.ttl)

    def _store(self, prompt, text: str, extra: dict, ttl) -> int:
        """A new answer replaces the entries of the very same prompt: the model was asked again
        because they could not serve (no-cache, max-age, an ambiguous rival), so it is the fresher."""
        return self.cache.store_chat(prompt, text, ttl=ttl, extra=extra, replace=True)

    async def _relay(self, request, body: dict, prompt, controls, headers: dict, timing: dict) -> web.StreamResponse:
        """A streamed answer relayed event by event as the upstream sends it; stored, before
        [DONE] is relayed, only when it arrived whole."""
        start = time.perf_counter()
        self.cache.load.started()
        seconds = None
        response = None
        try:
            async with self._session.post(f"{self.base_url}/chat/completions", data=wire.upstream_body(body),
                                          headers=self._upstream_headers) as upstream:
                if upstream.status != 200:
                    data = await _read_limited(upstream, MAX_UPSTREAM_BYTES)
                    return _passed_on(upstream, data, headers)
                response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache",
                                                       "Server-Timing": _server_timing(timing)})
                await response.prepare(request)
                reader = wire.StreamReader(self.config.max_answer_bytes)
                try:
                    while True:
                        try:
                            data = await upstream.content.readany()
                        except (aiohttp.ClientError, asyncio.TimeoutError):
                            break  # broken off: told below
                        if not data:
                            break
                        events = reader.feed(data)
                        if reader.done and seconds is None:
                            seconds = time.perf_counter() - start
                            if prompt is not None and reader.whole:
                                await self._run(self._store, prompt, reader.text, reader.kept(), controls.ttl)
                        if events:
                            await response.write(b"".join(events))
                    rest = reader.rest()
                    if rest:
                        await response.write(rest)
                    if not reader.done:
                        await response.write(_broken_event())
                    await response.write_eof()
                except ConnectionResetError:
                    pass  # the client left: nothing more to send (and an answer not yet whole is not stored)
                return response
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            if response is None:
                raise _unreachable(self.base_url, error) from None
            raise
        finally:
            self.cache.load.finished(seconds)
            if prompt is not None and seconds is not None:
                self.cache.economics.upstream(prompt.category, seconds)


async def _read_limited(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    if upstream.content_length is not None and upstream.content_length > limit:
        raise Refusal(502, f"the upstream's answer of {upstream.content_length} bytes is over the gateway's "
                      f"{limit}", code="upstream_answer_too_large")
    parts, size = [], 0
    while data := await upstream.content.readany():
        size += len(data)
        if size > limit:
            raise Refusal(502, f"the upstream's answer is over the gateway's {limit} bytes",
                          code="upstream_answer_too_large")
        parts.append(data)
    return b"".join(parts)


def _passed_on(upstream: aiohttp.ClientResponse, data: bytes, headers: dict | None = None) -> web.Response:
    """The upstream's answer with its status; an error body not in OpenAI's shape is put in it."""
    if upstream.status != 200 and not _is_error_body(data):
        message = f"upstream answered HTTP {upstream.status}: {data[:500].decode(errors='replace')}"
        data = json.dumps(wire.error_body(upstream.status, message, code="upstream_error")).encode()
    content_type = upstream.headers.get("Content-Type", _JSON) if upstream.status == 200 else _JSON
    return web.Response(status=upstream.status, body=data, headers={**(headers or {}), "Content-Type": content_type})


def _whole(status: int, data: bytes | None, upstream_headers: dict, headers: dict, timing: dict) -> web.Response:
    if data is None:
        return Refusal(503, "the gateway stopped before the upstream answered").response()
    response = web.Response(status=status, body=data, headers={**headers, **upstream_headers,
                                                               "Server-Timing": _server_timing(timing)})
    if status != 200 and not _is_error_body(data):
        message = f"upstream answered HTTP {status}: {data[:500].decode(errors='replace')}"
        response.body = json.dumps(wire.error_body(status, message, code="upstream_error")).encode()
        response.content_type = _JSON
    return response


def _is_error_body(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data).get("error"), dict)
    except (ValueError, AttributeError):
        return False


def _unreachable(url: str, error: Exception) -> Refusal:
    if isinstance(error, asyncio.TimeoutError):
        return Refusal(504, f"upstream {url} gave no answer in time", code="upstream_timeout")
    return Refusal(502, f"upstream {url} unreachable: {error}", code="upstream_unreachable")


def _broken_event() -> bytes:
    error = wire.error_body(502, "the upstream's stream broke off before its end; nothing was cached",
                            code="upstream_stream_broken")
    return b"data: " + json.dumps(error).encode() + b"\n\n"


def _server_timing(timing: dict) -> str:
    """Server-Timing's value: milliseconds rendering, embedding and classifying the prompt, looking
    up, and waiting for the upstream (its whole answer; a stream's is not known when headers go)."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in timing.items()
                     if seconds is not None) or "gateway;dur=0"
