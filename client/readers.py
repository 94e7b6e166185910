"""Where the blocking SDK's searches go when the server has read replicas (server/replicas.py).

A collection's description names the ports of the server's ready readers (`reader_ports`, on the
server's own host). The blocking SDK's coalescer (client/coalesce.py), where the threads' single
searches gather, opens its streams on the processes in turn, so the groups in flight spread over
them and stay as large as with one process. Without coalescing, and for search batches, each
thread is given one of the processes, in turn from a random one (so that clients of one thread
spread too), and keeps it; so is a client's only searching thread, whose searches go over its
own stream until a second thread searches (`_alone`: nothing to gather with). Everything but
searches goes to the server. A reader that fails a search with UNAVAILABLE (dead, or replaced
and still catching up) is set aside and the search is made again on the server at once; the
readers are looked up again, from the next collection description the SDK asks for or
`REFRESH_SECONDS` after the last, whichever comes first. A ready reader has applied every write
the server acknowledged, so a search there sees the caller's own writes.
"""

import asyncio
import random
import threading
import time

import grpc

REFRESH_SECONDS = 30.0  # look the readers up again this often (sooner after one failed)
RETRY_SECONDS = 2.0  # after a reader failed, how soon they are looked up again


class ReaderDown(Exception):
    """A reader could not answer: search on the server instead."""


class Readers:
    def __init__(self, primary, host: str, open_channel):
        self.primary, self.host, self._open = primary, host, open_channel  # open_channel(address) -> _Channel
        self._channels: dict[int, object] = {}  # port -> channel, kept while the port is named
        self._targets = [primary]
        self._local = threading.local()
        self._turn = random.randrange(1 << 16)  # where this client's turns start: clients of one thread spread too
        self._lock = threading.Lock()
        self._refresh_at = time.monotonic() + REFRESH_SECONDS
        self.describe = None  # () -> a CollectionInfo, to look the readers up again

    def update(self, ports) -> None:
        """The server's ready readers are now `ports` (one set aside after a failure is back)."""
        for channel in self._replace(ports):
            channel.close()

    def _replace(self, ports) -> list:
        """Channels to the readers named, and those to readers no longer named (to close)."""
        ports = sorted(set(ports))
        with self._lock:
            self._refresh_at = time.monotonic() + REFRESH_SECONDS
            gone = [self._channels.pop(p) for p in list(self._channels) if p not in ports]
            for port in ports:
                if port not in self._channels:
                    self._channels[port] = self._open(f"{self.host}:{port}")
            self._targets = [self.primary] + [self._channels[p] for p in ports]
        return gone

    def ports(self) -> list[int]:
        with self._lock:
            return [port for port, channel in self._channels.items() if channel in self._targets]

    def _mine(self):
        """This thread's process: given in turn on its first search, kept while it is named."""
        if time.monotonic() > self._refresh_at and self.describe is not None:
            self._refresh()
        targets = self._targets
        mine = getattr(self._local, "channel", None)
        if mine is None or (mine is not self.primary and mine not in targets):
            with self._lock:
                mine = targets[self._turn % len(targets)]
                self._turn += 1
            self._local.channel = mine
        return mine

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() <= self._refresh_at:
                return  # another thread is at it
            self._refresh_at = time.monotonic() + REFRESH_SECONDS
        try:
            self.update(self.describe().reader_ports)
        except Exception:  # noqa: BLE001 - keep the readers we know; the next refresh tries again
            pass

    def _down(self, channel) -> None:
        with self._lock:
            self._targets = [t for t in self._targets if t is not channel]
            self._refresh_at = min(self._refresh_at, time.monotonic() + RETRY_SECONDS)
        if getattr(self._local, "channel", None) is channel:
            self._local.channel = None

    def spread_groups(self) -> bool:
        """Let the server's coalescer send groups to the readers (client/coalesce.py); whether it can."""
        groups = getattr(self.primary, "groups", None)
        if groups is None:
            return False
        groups.spread(self._grpc_targets, self._group_failed)
        self._coalesced = True
        return True

    _coalesced = False  # single searches go through the server's coalescer, which spreads them

    def _grpc_targets(self):
        if time.monotonic() > self._refresh_at and self.describe is not None:
            self._refresh()
        return [t.channel for t in self._targets]

    def _group_failed(self, target, error) -> None:
        if reader_down(error):
            for channel in self._targets:
                if channel.channel is target:
                    self._down(channel)

    def search(self, call):
        if self._alone():
            return self._on_mine("search", call, gather=False)
        if self._coalesced and self.primary.groups.available:
            return self.primary.search(call)
        return self._on_mine("search", call)

    _searchers = 0  # threads that have searched through this client (counted up to two)

    def _alone(self) -> bool:
        """Whether only the calling thread has searched through this client so far: its searches
        then go over its own stream, with nothing to gather with (the coalescer's bookkeeping
        cost a single-threaded client ~9 us of CPU a search); from the second thread on, every
        thread's go through the coalescer."""
        if self._searchers > 1:
            return False
        if not getattr(self._local, "searched", False):
            with self._lock:
                self._local.searched = True
                self._searchers += 1
        return self._searchers == 1

    def run(self, call):
        """A search batch: on this thread's process too."""
        return self._on_mine("run", call)

    def _on_mine(self, name: str, call, **options):
        """`channel.search(call)` or `channel.run(call)` on this thread's process; on the server if
        that is a reader that cannot answer."""
        channel = self._mine()
        if channel is self.primary:
            return getattr(channel, name)(call, **options)
        try:
            return getattr(channel, name)(call, **options)
        except ReaderDown:
            self._down(channel)
            return getattr(self.primary, name)(call, **options)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
            self._targets = [self.primary]
        for channel in channels:
            channel.close()


class AsyncReaders(Readers):
    """The asyncio SDK's: its coroutines share one thread, so each search takes the next process
    in turn (a reader that fails is set aside the same way)."""

    def update(self, ports) -> None:
        for channel in self._replace(ports):
            asyncio.ensure_future(channel.close())  # called from the SDK's coroutines: a loop runs

    def _next(self):
        targets = self._targets
        with self._lock:
            self._turn += 1
            return targets[self._turn % len(targets)]

    async def _refresh_due(self) -> None:
        if time.monotonic() <= self._refresh_at or self.describe is None:
            return
        self._refresh_at = time.monotonic() + REFRESH_SECONDS
        try:
            self.update((await self.describe()).reader_ports)
        except Exception:  # noqa: BLE001 - keep the readers we know; the next refresh tries again
            pass

    async def _on_some(self, name: str, call):
        await self._refresh_due()
        channel = self._next()
        if channel is self.primary:
            return await getattr(channel, name)(call)
        try:
            return await getattr(channel, name)(call)
        except ReaderDown:
            self._down(channel)
            return await getattr(self.primary, name)(call)

    async def search(self, call):
        return await self._on_some("search", call)

    async def run(self, call):
        return await self._on_some("run", call)

    async def aclose(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
            self._targets = [self.primary]
        for channel in channels:
            await channel.close()


def reader_down(error: grpc.RpcError) -> bool:
    """Whether a reader's failed call means it cannot answer (so the server should)."""
    return error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
