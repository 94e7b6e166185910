"""A stand-in LLM: a small, real OpenAI-compatible server on loopback (HTTP, a thread per request).

The semantic cache's tests and the load-test harness put it where a real model would be: it
serves /v1/chat/completions (whole or streamed answers, with usage: words counted as tokens;
streamed, when `stream_options.include_usage` asks), /v1/embeddings (a bag-of-words stand-in)
and /v1/models. It answers "answer <n> to: <last user message>" after `delay` seconds, as a real model
takes its time, and counts the chat calls it received. Tests switch its behaviour per test:
`delay`, `status` (an HTTP error instead of an answer), `break_stream` (a streamed answer cut off
before its end), `finish_reason`. It listens on 127.0.0.1 only and never calls anything itself.
"""

import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


EMBEDDING_DIM = 32


def bag_of_words(text: str) -> list[float]:
    """A stand-in embedding model for the /v1/embeddings route: words hashed into 32 buckets."""
    vector = [0.0] * EMBEDDING_DIM
    for word in text.lower().split():
        vector[zlib.crc32(word.encode()) % EMBEDDING_DIM] += 1.0
    return vector


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the cache opens a connection per call: bursts of misses must not be refused


class StandInLLM:
    def __init__(self, delay: float = 0.0):
        if not delay >= 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        self.delay, self.status, self.break_stream, self.finish_reason = float(delay), 200, False, "stop"
        self.calls = 0
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go in two writes: on a kept-alive connection Nagle's algorithm held the
            # body until the client's delayed ACK, ~40 ms an answer (real model servers set this too)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if not self.path.endswith("/models"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                self._send(200, {"object": "list", "data": [{"id": "stand-in", "object": "model", "created": 0,
                                                             "owned_by": "curator-tests"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/embeddings"):
                    return self._send(200, {"data": [{"index": i, "embedding": bag_of_words(text)}
                                                     for i, text in enumerate(body["input"])]})
                with upstream._lock:
                    upstream.calls += 1
                    n = upstream.calls
                time.sleep(upstream.delay)
                if upstream.status != 200:
                    return self._send(upstream.status, {"error": {"message": "the model is overloaded"}})
                question = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                answer = f"answer {n} to: {question}"
                prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
                usage = {"prompt_tokens": prompt_words, "completion_tokens": len(answer.split()),
                         "total_tokens": prompt_words + len(answer.split())}
                head = {"id": f"chatcmpl-standin-{n}", "created": int(time.time()), "model": body.get("model", "stand-in")}
                if not body.get("stream"):
                    return self._send(200, {**head, "object": "chat.completion", "usage": usage,
                                            "choices": [{"index": 0, "finish_reason": upstream.finish_reason,
                                                         "message": {"role": "assistant", "content": answer}}]})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                words = answer.split(" ")
                for i, word in enumerate(words):
                    if upstream.break_stream and i == len(words) // 2:
                        self.wfile.flush()
                        self.connection.shutdown(2)  # the connection drops mid-answer
                        return
                    last = i == len(words) - 1
                    chunk = {**head, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": word + ("" if last else " ")},
                                          "finish_reason": upstream.finish_reason if last else None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunk = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
