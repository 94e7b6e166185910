"""Processes a benchmark steers: each runs one role, a function of a benchmarks module, in a
process of its own and from a chosen checkout (benchmarks/checkout.py), so that a client is the
SDK under test and competes for the machine as a real client does.

    python -m benchmarks.workers MODULE:FUNCTION '{"keyword": "arguments"}'

The role function gets the keyword arguments, does its setup and returns a handler; the process
then writes {"ready": true}, and for each command it reads it writes handler(command). One JSON
line each way over stdin and stdout (the process's own stdout goes to stderr, so that nothing
else can break a line). End of input ends it. Times in commands are time.monotonic(), the same
clock in every process of the machine.
"""

import importlib
import json
import os
import select
import subprocess
import sys
import time
import traceback

from .checkout import Checkout


class Worker:
    def __init__(self, checkout: Checkout, role: str, **kwargs):
        self.role = role
        self.process = checkout.popen(["-m", "benchmarks.workers", role, json.dumps(kwargs)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, **command) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = 600.0) -> dict:
        if not select.select([self.process.stdout], [], [], timeout)[0]:
            raise TimeoutError(f"{self.role} (pid {self.pid}) said nothing for {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.role} (pid {self.pid}) ended, exit {self.process.wait()}; see its stderr")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.role} failed:\n{answer['error']}")
        return answer

    def ask(self, timeout: float = 600.0, **command) -> dict:
        self.send(**command)
        return self.receive(timeout)

    def close(self, timeout: float = 120.0) -> None:
        """End of input, then wait for it to finish what it was doing (killed after timeout)."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.process.kill()
                self.process.wait()


def start(checkout: Checkout, role: str, count: int = 1, **kwargs) -> list[Worker]:
    """`count` workers of one role, started together, returned once all are ready."""
    workers = [Worker(checkout, role, **kwargs) for _ in range(count)]
    try:
        for w in workers:
            w.receive()
    except BaseException:
        close_all(workers)
        raise
    return workers


def close_all(workers) -> None:
    for w in workers:
        w.close()


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    module, name = sys.argv[1].split(":")
    # The SDK's TCP stack, as a user's process that imports curator first gets it (curator_proto/tcp.py):
    # a role module that imports grpc before the SDK would otherwise run its clients on gRPC's
    # EventEngine, ~40 us more client CPU a search here.
    from curator_proto.tcp import prefer_classic_tcp

    prefer_classic_tcp()
    try:
        handler = getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))
        out.write(json.dumps({"ready": True}) + "\n")
        for line in sys.stdin:
            out.write(json.dumps(handler(json.loads(line))) + "\n")
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        out.write(json.dumps({"error": traceback.format_exc()}) + "\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
