"""Read replicas: several serving processes on one machine, so that searches use every core.

A Python process serves about one core of gRPC and engine work (its interpreter lock). With
`curator serve --readers N` the server (the *primary*) starts N more `curator serve` processes
(*readers*), each on a copy of its data, and keeps them equal to itself:

- **Bootstrap.** While every replicated write waits (`_gate`, exclusive), the primary takes a
  snapshot of its data directory (a RocksDB checkpoint: hard links, milliseconds) and queues a
  new reader; the writes that follow are queued for it too. The reader opens the snapshot in a
  process of its own (durability "none": the primary holds the truth), and its sender thread
  replays the queue. When the queue is empty the reader is told it is ready, and only then does
  the primary name its port to clients (`CollectionInfo.reader_ports`).
- **Writes.** A write runs on the primary as before; if it succeeds it is queued, in the order
  the primary applied it (a lock per collection around the write and the queueing), for every
  reader, and the primary acknowledges it once every ready reader has applied it too. So after a
  write returns, a search on any ready reader sees it: read-your-writes, and never a revoked
  vector after the revoke returned. A write the primary refused goes nowhere.
- **Failure.** A reader whose process ends is replaced at once. One that fails to apply a
  write, or does not apply it within `APPLY_SECONDS`, is killed (SIGKILL) before that write is
  acknowledged, so no reader that missed an
  acknowledged write can answer again; the primary starts a new one from a new snapshot, on a
  new port, with backoff. Clients whose reader died search on the primary meanwhile.
- **Readers answer searches and reads only** (`ReplicaGuard`): other calls are
  FAILED_PRECONDITION naming the primary, except the primary's own, which carry the secret it
  gave the reader in its environment. Until it is told it is ready a reader answers them
  UNAVAILABLE, so no client reads from a reader that is still catching up.

The SDK (`curator_client/readers.py`) spreads its threads' searches over the primary and the
ready readers and sends everything else to the primary. Costs: each reader holds a full copy of
the index in memory and on disk; a write costs one loopback call per reader before it is
acknowledged; writes to one collection are applied one at a time (their fsyncs no longer
overlap). Key rates and stream limits are counted per process.

Must never: acknowledge a write that a ready reader has not applied, or let a reader that missed
one answer a search.
"""

import contextlib
import hmac
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import grpc

from curator.rwlock import ReadWriteLock

from .peer import Peer

log = logging.getLogger("curator.server")

SECRET_ENV = "CURATOR_REPLICATION_SECRET"
PRIMARY_PID_ENV = "CURATOR_PRIMARY_PID"
REPLICATION = "curator-replication"  # metadata: the primary's secret, on its calls to a reader
READY = "curator-replica-ready"  # metadata: on the primary's call that tells a reader it is ready
# What a reader answers for clients: searches and the reads that are the same on every copy (not the
# cache, key rates, archives or tenant states, which are the primary's own).
READS = frozenset(f"/curator.v1.{service}/{method}" for service, methods in {
    "Search": ("Search", "SearchBatch", "SearchStream", "SearchGroups"),
    "Collections": ("Describe", "List"),
    "Tenants": ("List", "Stats"),
    "VectorsService": ("Get", "Count", "TenantsOf", "Contains", "VisibleTo", "Owned", "Scroll", "GetPayloads",
                       "PayloadSchema"),
    "Admin": ("ServerInfo",),
}.items() for method in methods)
APPLY_SECONDS = 10.0  # a reader that takes longer to apply a write is replaced (clients wait 30 s)
START_SECONDS = 120.0
RESTART_BACKOFF = (1.0, 30.0)


class ReplicaGuard(grpc.ServerInterceptor):
    """A reader's first interceptor: the primary's calls pass; searches and other reads (`READS`)
    pass once it is ready; everything else is refused, naming the primary."""

    def __init__(self, secret: str, primary: str, public_services=()):
        self.secret, self.primary, self.public = secret.encode(), primary, frozenset(public_services)
        self.ready = False

    def intercept_service(self, continuation, details):
        method = details.method or ""
        for key, value in details.invocation_metadata or ():
            if key == REPLICATION and hmac.compare_digest(value.encode(), self.secret):
                if any(k == READY for k, _ in details.invocation_metadata):
                    self.ready = True
                return continuation(details)
        if method.lstrip("/").partition("/")[0] in self.public:
            return continuation(details)
        if method in READS:
            if self.ready:
                return continuation(details)
            return _refusal(grpc.StatusCode.UNAVAILABLE, "this read replica is still catching up with its primary "
                                                         f"at {self.primary}; ask there")
        return _refusal(grpc.StatusCode.FAILED_PRECONDITION,
                        f"this process is a read replica; it answers searches and reads only: send {method} to the "
                        f"primary at {self.primary}")


def watch_primary(done: threading.Event, every: float = 0.2) -> None:
    """(In a reader.) Stop when the primary that started this process is gone (this process is
    handed to another parent): a reader left behind would answer from data no write reaches any
    more, while clients that still know its port search it."""
    primary = int(os.environ.get(PRIMARY_PID_ENV, os.getppid()))  # the primary may be gone before this runs

    def watch():
        while not done.is_set():
            if os.getppid() != primary:
                log.warning("the primary (pid %s) is gone; this reader stops", primary)
                done.set()
            done.wait(every)

    threading.Thread(target=watch, name="curator-watch-primary", daemon=True).start()


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def refuse(requests, context):
        context.abort(code, message)  # without reading the request

    return grpc.stream_unary_rpc_method_handler(refuse)


class Reader:
    """One read replica: its process, and the thread that sends it the primary's writes in order."""

    def __init__(self, replicas: "Replicas", number: int, incarnation: int, directory: Path):
        self.replicas, self.number, self.incarnation, self.directory = replicas, number, incarnation, directory
        self.port: int | None = None
        self.metrics_port: int | None = None  # its Prometheus endpoint, where the primary has one
        self.state = "starting"  # starting -> catching_up -> ready; failed
        self.process: subprocess.Popen | None = None
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"curator-reader-{number}", daemon=True)

    @property
    def name(self) -> str:
        return f"reader {self.number} (incarnation {self.incarnation}, port {self.port})"

    def send(self, write) -> threading.Event | None:
        """Queue `write` (a function of the reader's RemoteDatabase); its completion, to be waited
        for unless the reader is still catching up (it is named to no client before the queue is
        empty)."""
        applied = threading.Event()  # set once the reader applied it, or is dead
        with self._cond:
            if self.state == "failed":
                return None
            self._queue.append((write, applied))
            self._cond.notify()
            return applied if self.state == "ready" or self._announcing else None

    _announcing = False  # the queue emptied and the ready call is on its way: writes from now on are waited for

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        applied = None
        try:
            db = self._launch()
            with self._cond:
                self.state = "catching_up"
            while True:
                with self._cond:
                    while not self._queue and self.state != "failed":
                        if self.state == "catching_up":
                            self._announcing = True
                            break
                        self._cond.wait()
                    if self.state == "failed":
                        return
                    item = self._queue.popleft() if self._queue else None
                if item is None:  # caught up: tell the reader, then name it to clients
                    db.announce_ready()
                    with self._cond:
                        self.state = "ready"
                    self.replicas.started(self)
                    log.info("%s is ready", self.name)
                    continue
                write, applied = item
                write(db)
                applied.set()
        except Exception as error:  # noqa: BLE001 - any failure retires this reader
            if self.state != "failed":
                log.error("%s failed: %s; replacing it", self.name, error)
            self.fail()
            if applied is not None:
                applied.set()  # the write it was applying: released once the process is dead

    def _launch(self):
        self.process, self.port = self.replicas.spawn(self)
        threading.Thread(target=self._watch, name=f"curator-reader-{self.number}-watch", daemon=True).start()
        deadline = time.monotonic() + START_SECONDS
        db = self.replicas.connect(self.port)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"its process exited with status {self.process.returncode} while starting")
            try:
                db.server_info()
                return _ReaderClient(db, lambda: self.replicas.connect(self.port, ((READY, "1"),)))
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not serving within {START_SECONDS} s") from None
                time.sleep(0.1)

    def _watch(self) -> None:
        """Replace the reader as soon as its process ends, writes or not."""
        status = self.process.wait()
        if self.state != "failed":
            log.error("%s exited with status %s; replacing it", self.name, status)
            self.fail()

    def fail(self) -> None:
        """Kill the process (before any write it missed is acknowledged), release every waiting
        write, and ask for a replacement."""
        with self._cond:
            if self.state == "failed":
                return
            self.state = "failed"
            pending, self._queue = self._queue, deque()
            self._cond.notify_all()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for _, applied in pending:
            applied.set()
        self.replicas.replace(self)

    def stop(self) -> None:
        with self._cond:
            self.state = "failed"
            self._cond.notify_all()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _ReaderClient(Peer):
    """The primary's SDK connection to one reader."""

    def __init__(self, db, connect_ready):
        super().__init__(db)
        self._connect_ready = connect_ready

    def announce_ready(self) -> None:
        told = self._connect_ready()
        try:
            told.server_info()
        finally:
            told.close()

    def __getattr__(self, name):
        return getattr(self.db, name)


class Replicas:
    """The primary's readers: started, fed every write, replaced when they fail."""

    def __init__(self, db, count: int, arguments, data: str, client_host: str, keys_file: str | None,
                 root_certificates: bytes | None = None, metrics: bool = False):
        self.db, self.count, self.arguments = db, count, arguments  # arguments(port, data, keys, metrics) -> argv
        self.metrics = metrics  # readers get a metrics endpoint each (the primary has one)
        self.base = Path(data.rstrip("/\\") + "-readers")
        self.client_host, self.root_certificates = client_host, root_certificates
        self.secret = secrets.token_urlsafe(32)
        self.internal_key, self.keys_file = None, keys_file
        if keys_file is not None:
            from .auth import new_key

            self.internal_key = new_key()
        self._gate = ReadWriteLock()  # writes shared; a reader's bootstrap exclusive
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._readers: list[Reader] = []
        self._incarnations = 0
        self._stopped = False
        self._failures: dict[int, int] = {}

    # -- the primary's writes ------------------------------------------------------------------

    def write(self, collection: str, local, remote):
        """Run `local()` on the primary; if it succeeds, `remote(result, reader)` on every reader in
        the same order, and return once each ready reader has applied it."""
        with self._gate.shared(), self._lock_of(collection):
            result = local()
            waits = [(reader, reader.send(lambda client, r=result: remote(r, client))) for reader in self._readers]
        for reader, applied in waits:
            if applied is not None and not applied.wait(APPLY_SECONDS):
                log.error("%s did not apply a write within %s s; replacing it", reader.name, APPLY_SECONDS)
                reader.fail()
        return result

    def _lock_of(self, collection: str):
        """The lock that orders the writes to one collection ("": the database's own, quotas)."""
        with self._locks_lock:
            lock = self._locks.get(collection)
            if lock is None:
                lock = self._locks[collection] = threading.Lock()
            return lock

    # -- readers -------------------------------------------------------------------------------

    def start(self) -> None:
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        for left in self.base.iterdir():  # a primary that was killed leaves its readers' copies: disposable
            if left.suffix != ".log":
                shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink(missing_ok=True)
        for number in range(self.count):
            self._bootstrap(number)

    def ready_ports(self) -> list[int]:
        return [r.port for r in self._readers if r.state == "ready"]

    def status(self) -> list[dict]:
        """Each reader: its number, incarnation (1 + the times it was replaced), port, state, the
        writes queued for it and its metrics port (None without)."""
        return [{"number": r.number, "incarnation": r.incarnation, "port": r.port, "state": r.state,
                 "queued": len(r._queue), "metrics_port": r.metrics_port} for r in list(self._readers)]

    def _bootstrap(self, number: int) -> None:
        """A new reader on a snapshot taken while no replicated write runs; the writes after it
        are queued for it from that moment."""
        self._incarnations += 1
        directory = self.base / f"{number}-{self._incarnations}"
        try:
            with self._gate.exclusive():
                if self._stopped:
                    return
                self.db.snapshot(directory)
                reader = Reader(self, number, self._incarnations, directory)
                self._readers.append(reader)
        except Exception as error:  # noqa: BLE001 - the primary serves on; the reader is tried again
            log.error("reader %s could not start (%s); trying again", number, error)
            _remove(directory)
            self._retry(number)
            return
        reader.start()

    def connect(self, port: int, metadata: tuple = ()):
        """The SDK on a reader, as its primary: the secret on every call, no retries, no streams."""
        from curator_client.remote import connect

        return connect(f"{self.client_host}:{port}", api_key=self.internal_key, timeout=APPLY_SECONDS, retries=0,
                       search_stream=False, coalesce=False, readers=False,
                       metadata=((REPLICATION, self.secret), *metadata), root_certificates=self.root_certificates)

    def spawn(self, reader: Reader) -> tuple[subprocess.Popen, int]:
        keys = None
        if self.keys_file is not None:
            from .auth import append_entry, key_entry

            keys = str(reader.directory) + ".keys.toml"
            shutil.copyfile(self.keys_file, keys)
            os.chmod(keys, 0o600)
            append_entry(keys, key_entry("curator-primary", self.internal_key, [], admin=True))
        port = _free_port()
        reader.metrics_port = _free_port() if self.metrics else None
        log_path = Path(str(reader.directory) + ".log")
        with open(log_path, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "curator_server",
                                        *self.arguments(port, str(reader.directory), keys, reader.metrics_port)],
                                       env={**os.environ, SECRET_ENV: self.secret, PRIMARY_PID_ENV: str(os.getpid())}, stdout=out, stderr=out,
                                       start_new_session=True)
        return process, port

    def replace(self, reader: Reader) -> None:
        """Forget a failed reader and start its successor after a backoff (in the background)."""
        with self._gate.exclusive():
            if reader in self._readers:
                self._readers.remove(reader)
        _remove(reader.directory, log=False)  # its log stays, for whoever asks why it failed
        self._retry(reader.number)

    def _retry(self, number: int) -> None:
        """Start reader `number` again after a backoff that doubles while it keeps failing."""
        if self._stopped:
            return
        failures = self._failures[number] = self._failures.get(number, 0) + 1
        delay = min(RESTART_BACKOFF[1], RESTART_BACKOFF[0] * 2 ** (failures - 1))

        def later():
            time.sleep(delay)
            self._bootstrap(number)

        threading.Thread(target=later, name=f"curator-reader-{number}-restart", daemon=True).start()

    def started(self, reader: Reader) -> None:
        """A reader is ready: its next failure starts the backoff afresh."""
        self._failures.pop(reader.number, None)

    def stop(self) -> None:
        with self._gate.exclusive():
            self._stopped = True
            readers, self._readers = list(self._readers), []
        for reader in readers:
            reader.stop()
            _remove(reader.directory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _remove(directory: Path, log: bool = True) -> None:
    """A reader's data directory and what the server keeps beside one (archives, snapshots, its
    keys file and, with `log`, its log)."""
    for path in (directory, Path(f"{directory}-offloaded"), Path(f"{directory}-snapshots")):
        shutil.rmtree(path, ignore_errors=True)
    for path in (Path(f"{directory}.keys.toml"), *([Path(f"{directory}.log")] if log else [])):
        with contextlib.suppress(OSError):
            path.unlink()
