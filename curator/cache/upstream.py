"""The model the cache fronts: an OpenAI-compatible chat-completions endpoint over HTTP.

`Upstream.chat(messages, params)` returns the whole answer or raises: UpstreamTimeoutError when
the endpoint does not answer within `timeout` seconds (per read), UpstreamError for anything else
(connection refused, an HTTP error status, a malformed body, a stream that breaks off before its
end). With `stream=True` the answer is read as server-sent events and is returned only once the
stream has finished properly (a finish_reason, then `[DONE]`): a partial answer is never
returned, so it can never be cached.
"""

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..errors import UpstreamError, UpstreamTimeoutError

STORABLE_FINISH = ("stop", "length")  # a whole answer (length: as long as the caller's max_tokens allowed)


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str
    seconds: float


class Upstream:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0, stream: bool = False):
        self.base_url, self.timeout, self.stream = base_url.rstrip("/"), float(timeout), stream
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def chat(self, messages: list[dict], params: dict) -> Answer:
        start = time.perf_counter()
        body = json.dumps({**params, "messages": messages, "stream": self.stream}).encode()
        request = urllib.request.Request(f"{self.base_url}/chat/completions", body, self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text, finish = _read_stream(response) if self.stream else _read_whole(response)
        except TimeoutError:
            raise UpstreamTimeoutError(f"upstream {self.base_url} gave no answer within {self.timeout:g} s "
                                       "(nothing was cached)") from None
        except urllib.error.HTTPError as error:
            detail = error.read(500).decode(errors="replace")
            raise UpstreamError(f"upstream {self.base_url} answered HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise UpstreamTimeoutError(f"upstream {self.base_url} gave no answer within {self.timeout:g} s") from None
            raise UpstreamError(f"upstream {self.base_url} unreachable: {error.reason}") from None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
            raise UpstreamError(f"upstream {self.base_url} sent a broken answer ({error}); nothing was cached") from None
        return Answer(text, finish, time.perf_counter() - start)


def _read_whole(response) -> tuple[str, str]:
    choice = json.load(response)["choices"][0]
    return choice["message"]["content"], choice.get("finish_reason") or "stop"


def _read_stream(response) -> tuple[str, str]:
    parts, finish = [], None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            if finish is None:
                raise ValueError("the stream ended without a finish_reason")
            return "".join(parts), finish
        choice = json.loads(data)["choices"][0]
        parts.append(choice.get("delta", {}).get("content") or "")
        finish = choice.get("finish_reason") or finish
    raise ValueError("the stream broke off before [DONE]")
