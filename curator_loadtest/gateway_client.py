"""The plain HTTP client of the gateway_chat operation: one kept-alive connection per load client
(a Context is one thread), posting OpenAI chat completions to the server's gateway
(`curator serve --http-port`, server/gateway.py) as an application's OpenAI client would.

A reply other than 200 raises `GatewayError`, whose `code` ("HTTP_503") is what the harness counts
the failure under. It never retries a request the gateway may have received: only one sent on a
kept-alive connection the gateway had closed while idle, before any reply, is sent again once.
"""

import http.client
import json
from urllib.parse import urlsplit


class GatewayError(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"the gateway answered {status}: {body[:300].decode(errors='replace')}")
        self.code = f"HTTP_{status}"


class GatewayClient:
    def __init__(self, base_url: str, timeout: float = 10.0, api_key: str | None = None):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the gateway's base url is http://HOST:PORT/v1, got {base_url!r}")
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path + "/chat/completions"
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._connection: http.client.HTTPConnection | None = None

    def chat(self, messages: list[dict], model: str, tenant: str, category: str) -> tuple[str, str]:
        """(the answer's text, its X-Cache outcome)."""
        body = json.dumps({"model": model, "messages": messages}).encode()
        headers = {"Content-Type": "application/json", "X-Curator-Tenant": tenant, "X-Cache-Category": category,
                   **self._auth}
        reused = self._connection is not None
        try:
            status, outcome, data = self._post(body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
            status, outcome, data = self._post(body, headers)  # an idle connection closed by the gateway
        except BaseException:
            self.close()
            raise
        if status != 200:
            raise GatewayError(status, data)
        return json.loads(data)["choices"][0]["message"]["content"], outcome

    def _post(self, body: bytes, headers: dict) -> tuple[int, str, bytes]:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._connection.request("POST", self.path, body, headers)
        reply = self._connection.getresponse()
        data = reply.read()
        if reply.will_close:
            self.close()
        return reply.status, reply.getheader("X-Cache", ""), data

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
