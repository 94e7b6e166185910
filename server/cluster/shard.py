"""A shard: the tenants hashed to it, held by two copies (or more) on different nodes.

Every write goes to each ready copy at once, under the shard's lock, so that all copies apply
the same writes in the same order, and is acknowledged once every ready copy applied it:
losing any one node loses no acknowledged write, and a read on any copy sees every write
acknowledged before it (read-your-writes); reads go to the first copy (see `read`).

A copy that does not answer (its process or node is gone) leaves the shard at once; the
cluster seeds a replacement from a surviving copy (server/cluster/controller.py). A copy that
refuses a write the first copy applied has diverged: it leaves too, and is replaced the same way.
A write the first copy answering refuses (a typed error) was applied nowhere."""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import curator
from curator.errors import CuratorError, UpstreamError

from ..peer import Peer

log = logging.getLogger("curator.cluster")
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="curator-copies")  # a write's other copies
SHARD_CALL_SECONDS = 120.0  # a call's deadline on a copy (bulk writes included); hangs are found by pings


def is_down(error: Exception) -> bool:
    """Whether a copy failed to answer at all (as opposed to refusing with a typed error)."""
    if isinstance(error, UpstreamError):  # UNAVAILABLE as the SDK raises it (copies have no upstream model)
        return True
    if type(error) is CuratorError:
        return str(error).startswith("UNAVAILABLE")
    return isinstance(error, ValueError) and "closed channel" in str(error)


def _outcome(call, copy) -> tuple[bool, object]:
    try:
        return True, call(copy)
    except Exception as error:  # noqa: BLE001 - sorted by Shard.write
        return False, error


class ShardUnavailableError(UpstreamError):
    """No copy of the shard answers (more copies were lost than it has)."""


@dataclass(eq=False)
class Copy:
    name: str
    actor: object  # the ShardHost actor's handle
    node: str
    address: str
    key: str
    peer: Peer | None = field(default=None, repr=False)  # the front's connection to it

    def connect(self) -> "Copy":
        self.peer = Peer(curator.connect(self.address, api_key=self.key, timeout=SHARD_CALL_SECONDS, retries=0,
                                         readers=False))
        return self

    @property
    def db(self):
        return self.peer.db

    def collection(self, name: str):
        return self.peer.collection(name)

    def forget(self, name: str) -> None:
        self.peer.forget(name)

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()


class Shard:
    def __init__(self, number: int, on_lost):
        self.number = number
        self.copies: list[Copy] = []  # ready copies; replaced whole, never changed in place
        self.lock = threading.RLock()  # writes, and seeding a new copy
        self._on_lost = on_lost  # on_lost(shard, copy): the cluster replaces it

    def read(self, call):
        """`call(copy)` on the first ready copy, the next if it does not answer. Reads stay on
        one copy: a read can change what a copy holds in memory (a search or an admin read wakes
        an inactive or offloaded tenant there), and the reads after it must see that state; the
        other copies are standbys, equal in what they store. A read that fails on a copy the
        cluster retired meanwhile (moved to another node: its channel closed under the call) is
        asked again of the copies that serve now, whatever the error."""
        tried = []
        while True:
            copy = next((c for c in self.copies if c not in tried), None)  # Copy compares by identity
            if copy is None:
                raise ShardUnavailableError(f"shard {self.number} has no copy that answers; retry shortly")
            try:
                return call(copy)
            except Exception as error:
                retired = copy not in self.copies
                if not retired and not is_down(error):
                    raise
                tried.append(copy)
                if not retired:
                    self.lost(copy)

    def write(self, call):
        """`call(copy)` on every ready copy at once (the shard's lock keeps their order the same);
        the answer of the first copy that applied it. The engine is deterministic (the front draws
        ids), so the copies agree: one that refuses what another applied, or applied what the
        others refused, has diverged and leaves, and so does one that does not answer. A write
        every copy refuses was applied nowhere: its error is raised."""
        with self.lock:
            copies = self.copies
            pending = [_POOL.submit(_outcome, call, copy) for copy in copies[1:]]
            outcomes = [_outcome(call, copies[0])] + [f.result() for f in pending] if copies else []
            applied = [answer for ok, answer in outcomes if ok]
            refused = [answer for ok, answer in outcomes if not ok and not is_down(answer)]
            for copy, (ok, answer) in zip(copies, outcomes):
                if not ok and (is_down(answer) or applied):
                    self.lost(copy)
            if applied:
                if refused:
                    log.warning("shard %d: a copy refused a write the others applied (%s); it is replaced",
                                self.number, refused[0])
                return applied[0]
            if refused:
                raise refused[0]
            raise ShardUnavailableError(f"shard {self.number} has no copy that answers; retry shortly")

    def lost(self, copy: Copy) -> None:
        with self.lock:
            if copy not in self.copies:
                return
            self.copies = [c for c in self.copies if c is not copy]
        self._on_lost(self, copy)

    def add(self, copy: Copy) -> None:
        with self.lock:
            self.copies = self.copies + [copy]

    def remove(self, copy: Copy) -> None:
        with self.lock:
            self.copies = [c for c in self.copies if c is not copy]
