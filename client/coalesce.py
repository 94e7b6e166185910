"""Searches that a client's threads ask at the same moment travel to the server as one message.

Python's gRPC costs the server about as much CPU per message as the search itself, so under
concurrency the way to more searches per second is fewer messages per search. A thread that
searches while fewer than `in_flight` groups (4) are on their way sends its search at once, alone,
and waits for its reply itself: a lone search waits for nothing and wakes no other thread.
Searches asked while those groups travel gather. When a group's reply comes back, the thread
that waited for it sends what gathered meanwhile as one SearchGroup at once, before it answers
its own group's searches and returns to its caller; the wait for the new group's reply is left
to the new group's first search, whose thread is woken while the group travels (`server/service.py`
answers a group with one engine batch, and a small one on grpcio's polling thread). So the
next group leaves as soon as the last one is back, and the wake-up of a thread, which on a
virtual machine can cost more than the search (benchmarks/floor.py), is off that path. The batch
is whatever gathered while the previous one travelled, as in a database's group commit, with no
delay added to wait for company.

While more searches are asked than `in_flight`, only `crowded` groups (2) travel at once: on
two cores one group is searched while the next gathers, and the crowd gathers into groups
twice as large. A group's threads are woken one each whatever its size, so that halves the
messages a search costs without adding wake-ups (16 threads: 1.12-1.17x the searches/s with 2
than with 4, in alternation; with 4 threads every search still goes alone and wakes nobody).

A group of one travels as before, as a SearchRequest on a SearchStream; larger groups travel on
SearchGroups streams. A client whose searches have all come from one thread so far does not use
the coalescer at all (client/readers.py): with nothing to gather with, its bookkeeping cost ~9 us
of client CPU a search (4 single-threaded client processes, benchmarks/capacity.py's client in
alternation: 109 against 100 us); from the second searching thread on, every thread's searches
come here. The channel keeps
at most `in_flight` streams open (4, within the server's default share of streams per key),
however many threads search, and the threads drive them themselves (`stream.py`). Measured with
16 threads (GloVe x WordNet, benchmarks/capacity.py): 8 200 searches/s when the thread that
waited for a group passed the sending on by waking the next one; 9 600-11 000 with the group sent
at once and small groups answered on the server's polling thread (4 200-4 400 without
coalescing); 12 900 with 2 groups on their way in a crowd. When the server refuses groups (an
older server, or its stream limit), each search goes its own way again (its thread's
SearchStream, or a unary call), and groups are tried again later.
"""

import random
import threading
import time

import grpc

from curator_proto.v1 import curator_pb2 as pb

from .stream import GROUPS, SearchStream, Watchdog


_local = threading.local()


def _wake_up() -> threading.Lock:
    """The calling thread's wake-up call: a lock it holds. It waits by acquiring it again and is
    woken by another thread releasing it (a Lock, unlike an RLock, may be released by any thread),
    after which it holds it again, ready for the next wait. Cheaper than an Event each time."""
    lock = getattr(_local, "wake_up", None)
    if lock is None:
        lock = _local.wake_up = threading.Lock()
        lock.acquire()
    return lock


class _Search:
    __slots__ = ("request", "reply", "done", "receives", "woken")

    def __init__(self, request: pb.SearchRequest):
        self.request = request
        self.reply: pb.SearchStreamReply | None = None  # None when done: search another way
        self.done = False  # answered (or given back)
        self.receives: tuple | None = None  # a sent group whose reply its thread is to wait for
        self.woken: threading.Lock | None = None  # its thread's wake-up, while it waits

    def wake(self) -> None:
        """(Under the coalescer's lock, as `woken` is set.) Each wait is woken once."""
        woken, self.woken = self.woken, None
        if woken is not None:
            woken.release()


class Coalescer:
    """The searches of one channel's threads, sent in groups (see the module's note)."""

    RETRY_AFTER = 5.0  # seconds before groups are tried again after the server refused them

    def __init__(self, channel: grpc.Channel, metadata, watchdog: Watchdog, in_flight: int = 4, crowded: int = 2):
        self._channel, self._metadata, self._watchdog = channel, metadata, watchdog
        self.in_flight, self.crowded = in_flight, crowded
        self._asked = 0  # searches asked and not yet answered
        self._targets = lambda: (channel,)
        self._down = lambda target, error: None
        self._per_target: dict = {}  # channel -> streams open on it
        self._lock = threading.Lock()
        self._gathered: list[_Search] = []
        self._senders = 0  # sending turns taken: groups on their way
        self._idle: dict[bool, list[SearchStream]] = {True: [], False: []}  # unused: SearchStream / SearchGroups
        self._open = 0  # streams open, idle or in use
        self._retry_at = 0.0  # groups refused: until then, searches go on their threads' own streams
        self._alone_retry_at = 0.0  # SearchStreams refused: until then, a lone search is None (unary)

    def spread(self, targets, down) -> None:
        """Send groups to the server's read replicas too (client/readers.py): `targets()` names the
        channels (the server's first), `down(channel, error)` is told of a replica's stream that
        failed. Each new stream opens on the channel with the fewest of this coalescer's streams,
        so the groups in flight spread over the processes while every thread's searches still
        gather in one place (handing threads to processes would split them into smaller groups:
        measured 0.66x the searches/s with 16 threads over two processes)."""
        self._targets, self._down = targets, down

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._retry_at

    def search(self, request: pb.SearchRequest) -> pb.SearchStreamReply | None:
        """The search's reply (its result or its error), or None: search another way."""
        me = _Search(request)
        with self._lock:
            self._asked += 1
            self._gathered.append(me)
            group = stream = None
            if self._senders < (self.in_flight if self._asked <= self.in_flight else self.crowded):
                self._senders += 1
                group, self._gathered = self._gathered, []
                if len(group) == 1 and self._idle[True]:
                    stream = self._idle[True].pop()  # most often: alone, on an idle SearchStream
        if stream is not None and stream.target not in self._targets():
            with self._lock:  # to a process no longer named: `_stream` closes it with the others
                self._idle[True].append(stream)
            stream = None
        if group is not None:
            job = self._sent(group, stream)
            if job is not None and job[2][0] is me:  # it waits for its own group's reply
                return self._receive(*job)  # answered: no other thread hands it anything now
            if job is not None:
                self._hand(job)
        while True:
            with self._lock:
                job, me.receives = me.receives, None
                if job is None:
                    if me.done:
                        return me.reply
                    me.woken = woken = _wake_up()
            if job is not None:
                return self._receive(*job)  # its own group's: answered with it
            woken.acquire()
            if me.done:  # answered before it was woken: no need of the lock to know
                return me.reply

    def _send(self, group: list[_Search]) -> None:
        """(Holding a sending turn.) Send the group and leave the wait for its reply to its first
        search's thread, which is woken while the group travels."""
        job = self._sent(group)
        if job is not None:
            self._hand(job)

    def _hand(self, job: tuple) -> None:
        """The wait for a sent group's reply goes to its first search's thread."""
        with self._lock:
            job[2][0].receives = job
            job[2][0].wake()

    def _sent(self, group: list[_Search], stream: SearchStream | None = None) -> tuple | None:
        """(Holding a sending turn.) Send the group (a lone one on `stream` if given); (stream,
        lone, group) to wait on. A group that cannot be sent is given back (its searches go their
        own ways) and what has gathered meanwhile is tried; with nothing gathered, the turn is
        given back and None returned."""
        while group:
            job = self._start(group, stream)
            stream = None
            if job is not None:
                return job
            with self._lock:
                self._answered(group, None)
                group, self._gathered = self._gathered, []
                if not group:
                    self._senders -= 1
        return None

    def _receive(self, stream: SearchStream, lone: bool, group: list[_Search]) -> pb.SearchStreamReply | None:
        """Wait for a group's reply and answer its searches (the first one's reply is returned);
        then, keeping the sending turn, send what gathered meanwhile at once (its thread does not
        wait for that reply: one of the new group's threads does), or give the turn back. So a
        group leaves as soon as the one before it comes back, without waking a thread first."""
        replies = None
        try:
            answer = stream.receive()
            if lone:
                replies = (answer,)
            elif len(answer.replies) == len(group):
                replies = answer.replies
            failed = False
        except grpc.RpcError as error:
            replies = self._failed(stream, lone, error, len(group))
            if replies is None and stream.target is not self._channel:
                self._down(stream.target, error)
            failed = True
        with self._lock:
            if not failed:
                self._idle[lone].append(stream)
            following, self._gathered = self._gathered, []
            if not following:
                self._senders -= 1
                self._answered(group, replies)  # nothing to send first
                return group[0].reply
        self._send(following)
        with self._lock:
            self._answered(group, replies)
        return group[0].reply

    def _start(self, group: list[_Search], stream: SearchStream | None = None) -> tuple | None:
        """Send a group (a group of one as a lone SearchRequest where it can, on `stream` if
        given); (stream, lone, group) to wait on, or None if no stream took it."""
        stream, lone = (stream, True) if stream is not None else self._stream(len(group) == 1)
        if stream is None:
            return None
        try:
            stream.send(group[0].request if lone else pb.SearchGroup(searches=[s.request for s in group]))
        except grpc.RpcError as error:  # pragma: no cover - operate() reports an ended call as not sent
            self._failed(stream, lone, error, len(group))
            return None
        return stream, lone, group

    def _failed(self, stream: SearchStream, lone: bool, error: grpc.RpcError, n: int) -> list | None:
        """A stream that ended under a group: closed and forgotten. The group's replies if they are
        known (the deadline passed: each search failed), else None (each goes its own way); a
        refusal keeps its kind of stream unused for a while."""
        stream.close()
        with self._lock:
            self._open -= 1
            self._per_target[stream.target] -= 1
        if stream.timed_out:
            late = pb.SearchStreamReply(error=pb.Failure(
                code="DEADLINE_EXCEEDED", message=f"no reply within the {self._watchdog.timeout} s deadline"))
            return [late] * n
        if error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            if lone:
                self._alone_retry_at = time.monotonic() + self.RETRY_AFTER
            else:
                self._retry_at = time.monotonic() + self.RETRY_AFTER
        return None

    def _answered(self, group: list[_Search], replies) -> None:
        """(Under the lock.) The group's searches are answered: `replies` in order, or None (each
        goes its own way)."""
        self._asked -= len(group)
        for i, search in enumerate(group):
            search.reply = None if replies is None else replies[i]
            search.done = True
            search.wake()

    def _stream(self, alone: bool) -> tuple[SearchStream | None, bool]:
        """A stream for a sending turn and whether it is a SearchStream (else SearchGroups, which
        also takes a group of one). At most `in_flight` are open, one a sender: a sender that
        finds only the other kind idle and no room closes one of those for its own kind."""
        lone = alone and time.monotonic() >= self._alone_retry_at
        targets = self._targets()
        surplus = []
        with self._lock:
            for kind in (True, False):  # streams to processes no longer named are closed
                gone = [s for s in self._idle[kind] if s.target not in targets]
                if gone:
                    self._idle[kind] = [s for s in self._idle[kind] if s.target in targets]
                    self._forget(gone)
                    surplus += gone
            found = None
            if self._idle[lone]:
                found = self._idle[lone].pop(), lone
            elif alone and self._idle[False]:
                found = self._idle[False].pop(), False
            elif self._open >= self.in_flight:
                surplus.append(self._idle[not lone].pop())  # there is one: every other sender holds at most one
                self._forget(surplus[-1:])
            if found is None:
                # the fewest of these streams, ties at random: clients of one thread spread too
                target = min(targets, key=lambda t: (self._per_target.get(t, 0), random.random()))
                self._open += 1
                self._per_target[target] = self._per_target.get(target, 0) + 1
        for stream in surplus:
            stream.close(wait=False)
        if found is not None:
            return found
        try:
            stream = (SearchStream(target, self._metadata) if lone
                      else SearchStream(target, self._metadata, GROUPS, pb.SearchGroupReply))
        except (AttributeError, TypeError):  # grpcio's private machinery changed shape
            self._retry_at = self._alone_retry_at = float("inf")
            with self._lock:
                self._open -= 1
                self._per_target[target] -= 1
            return None, lone
        stream.target = target
        self._watchdog.watch(stream)
        return stream, lone

    def _forget(self, streams: list) -> None:
        """(Under the lock.) Idle streams about to be closed no longer count as open."""
        self._open -= len(streams)
        for stream in streams:
            self._per_target[stream.target] -= 1

    def close(self) -> None:
        with self._lock:
            streams = self._idle[True] + self._idle[False]
            self._idle = {True: [], False: []}
            self._forget(streams)
        for stream in streams:
            stream.close(wait=False)
