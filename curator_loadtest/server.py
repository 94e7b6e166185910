"""A Curator server that the load test starts itself: `curator serve` as its own process, on a
fresh temporary data directory and free loopback ports, stopped (SIGTERM, drained) and removed
at the end. Its pid is what the soak samples for memory and open files. `cache_config` is the
text of its `--cache-config` file (TOML), written into that directory. `checkout` runs it from
another checkout (anything with `popen(args, **options)`, as benchmarks/checkout.py); `api_key`
is the key its readiness check sends (a server with --keys answers no keyless call). `gateway`:
also serve the OpenAI-compatible HTTP gateway (`--http-port`), at `gateway_url`."""

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import curator


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    def __init__(self, durability: str = "sync", workers: int = 16, extra_args: tuple[str, ...] = (),
                 cache_config: str | None = None, checkout=None, api_key: str | None = None,
                 gateway: bool = False):
        self.durability, self.workers, self.extra_args = durability, workers, extra_args
        self.gateway = gateway
        self.gateway_url: str | None = None
        self.cache_config = cache_config
        self.checkout, self.api_key = checkout, api_key
        self.process: subprocess.Popen | None = None
        self.directory: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, ready_seconds: float = 120.0) -> "ManagedServer":
        self.directory = tempfile.mkdtemp(prefix="curator-load-")
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = Path(self.directory) / "server.log"
        command = [sys.executable, "-m", "curator_server", "serve", "--data", str(Path(self.directory) / "data"),
                   "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                   "--durability", self.durability, "--workers", str(self.workers), *self.extra_args]
        if self.gateway:
            http_port = free_port()
            self.gateway_url = f"http://127.0.0.1:{http_port}/v1"
            command += ["--http-port", str(http_port)]
        if self.cache_config is not None:
            config = Path(self.directory) / "cache.toml"
            config.write_text(self.cache_config)
            command += ["--cache-config", str(config)]
        with open(self.log_path, "wb") as log:
            if self.checkout is None:
                self.process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
            else:
                self.process = self.checkout.popen(command[1:], stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(ready_seconds)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ready_seconds: float) -> None:
        db = curator.connect(self.address, api_key=self.api_key, timeout=2, retries=0)
        deadline = time.monotonic() + ready_seconds
        try:
            while True:
                try:
                    db.list_collections()
                    return
                except curator.CuratorError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        tail = self.log_path.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"the server did not start; its log ends:\n{tail}") from None
                    time.sleep(0.1)
        finally:
            db.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
