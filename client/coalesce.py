"""Searches that a client's threads ask at the same moment travel to the server as one message.

Python's gRPC costs the server about as much CPU per message as the search itself, so under
concurrency the way to more searches per second is fewer messages per search. A thread that
searches while fewer than `in_flight` groups (4) are on their way sends its search at once, alone:
a lone search waits for nothing. Searches asked while those groups travel gather; when a group
comes back, the thread that sent it hands the sending on to the first search that gathered,
which sends all of them as one SearchGroup (`server/service.py` answers a group with one engine
batch). The batch is whatever gathered while the previous one travelled, as in a database's group
commit, with no delay added to wait for company.

A group of one travels as before, as a SearchRequest on a SearchStream, so a lone search costs
what it did without coalescing; larger groups travel on SearchGroups streams. The channel keeps
at most `in_flight` streams open (4, within the server's default share of streams per key),
however many threads search, and the sending thread drives them itself (`stream.py`). With two
turns, 4 threads had fallen to 4 700 searches/s against 10 800 without coalescing (a loopback
server, small data); with four, 11 800 against 11 100, and 16 threads 8 900 against 5 600. When the server refuses groups (an older
server, or its stream limit), each search goes its own way again (its thread's SearchStream, or
a unary call), and groups are tried again later.
"""

import threading
import time

import grpc

from curator_proto.v1 import curator_pb2 as pb

from .stream import GROUPS, SearchStream, Watchdog


class _Search:
    __slots__ = ("request", "reply", "done", "sends", "woken")

    def __init__(self, request: pb.SearchRequest):
        self.request = request
        self.reply: pb.SearchStreamReply | None = None  # None when done: search another way
        self.done = False  # answered (or given back)
        self.sends = False  # its thread holds one of the sending turns
        self.woken: threading.Event | None = None  # made (under the lock) only for a search that waits

    def wake(self) -> None:
        if self.woken is not None:
            self.woken.set()


class Coalescer:
    """The searches of one channel's threads, sent in groups (see the module's note)."""

    RETRY_AFTER = 5.0  # seconds before groups are tried again after the server refused them

    def __init__(self, channel: grpc.Channel, metadata, watchdog: Watchdog, in_flight: int = 4):
        self._channel, self._metadata, self._watchdog = channel, metadata, watchdog
        self.in_flight = in_flight
        self._lock = threading.Lock()
        self._gathered: list[_Search] = []
        self._senders = 0
        self._idle: dict[bool, list[SearchStream]] = {True: [], False: []}  # unused: SearchStream / SearchGroups
        self._open = 0  # streams open, idle or in use
        self._retry_at = 0.0  # groups refused: until then, searches go on their threads' own streams
        self._alone_retry_at = 0.0  # SearchStreams refused: until then, a lone search is None (unary)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._retry_at

    def search(self, request: pb.SearchRequest) -> pb.SearchStreamReply | None:
        """The search's reply (its result or its error), or None: search another way."""
        me = _Search(request)
        with self._lock:
            self._gathered.append(me)
            if self._senders < self.in_flight:
                self._senders += 1
                me.sends = True
        while True:
            if me.sends:
                self._send_until_answered(me)
            with self._lock:
                if me.done and not me.sends:
                    return me.reply
                if me.woken is None:
                    me.woken = threading.Event()
            me.woken.wait()
            me.woken.clear()

    def _send_until_answered(self, me: _Search) -> None:
        """Send what has gathered, group after group, until `me` is answered; then pass the
        sending turn on to the first search still waiting, or give it back."""
        while True:
            with self._lock:
                group, self._gathered = self._gathered, []
                if not group:  # another sender took `me` along: wait for its answer
                    self._pass_turn(me)
                    return
            self._exchange(group)
            with self._lock:
                if me.done:
                    self._pass_turn(me)
                    return

    def _pass_turn(self, me: _Search) -> None:
        """(Under the lock.) The sending turn goes to the oldest waiting search, or back."""
        me.sends = False
        if self._gathered:
            nxt = self._gathered[0]
            nxt.sends = True
            nxt.wake()
        else:
            self._senders -= 1

    def _exchange(self, group: list[_Search]) -> None:
        replies = None
        stream, lone = self._stream(len(group) == 1)
        if stream is not None:
            try:
                if lone:
                    replies = [stream.ask(group[0].request)]
                else:
                    answer = stream.ask(pb.SearchGroup(searches=[s.request for s in group]))
                    if len(answer.replies) == len(group):
                        replies = answer.replies
                with self._lock:
                    self._idle[lone].append(stream)
            except grpc.RpcError as error:
                stream.close()
                with self._lock:
                    self._open -= 1
                if stream.timed_out:  # the deadline passed: every search of the group failed
                    late = pb.SearchStreamReply(error=pb.Failure(
                        code="DEADLINE_EXCEEDED", message=f"no reply within the {self._watchdog.timeout} s deadline"))
                    replies = [late] * len(group)
                elif error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    if lone:
                        self._alone_retry_at = time.monotonic() + self.RETRY_AFTER
                    else:
                        self._retry_at = time.monotonic() + self.RETRY_AFTER
        with self._lock:
            for i, search in enumerate(group):
                search.reply = None if replies is None else replies[i]
                search.done = True
        for search in group:
            search.wake()

    def _stream(self, alone: bool) -> tuple[SearchStream | None, bool]:
        """A stream for a sending turn and whether it is a SearchStream (else SearchGroups, which
        also takes a group of one). At most `in_flight` are open, one a sender: a sender that
        finds only the other kind idle and no room closes one of those for its own kind."""
        lone = alone and time.monotonic() >= self._alone_retry_at
        surplus = None
        with self._lock:
            if self._idle[lone]:
                return self._idle[lone].pop(), lone
            if alone and self._idle[False]:
                return self._idle[False].pop(), False
            if self._open >= self.in_flight:
                surplus = self._idle[not lone].pop()  # there is one: every other sender holds at most one
            else:
                self._open += 1
        if surplus is not None:
            surplus.close(wait=False)
        try:
            stream = (SearchStream(self._channel, self._metadata) if lone
                      else SearchStream(self._channel, self._metadata, GROUPS, pb.SearchGroupReply))
        except (AttributeError, TypeError):  # grpcio's private machinery changed shape
            self._retry_at = self._alone_retry_at = float("inf")
            with self._lock:
                self._open -= 1
            return None, lone
        self._watchdog.watch(stream)
        return stream, lone

    def close(self) -> None:
        with self._lock:
            streams = self._idle[True] + self._idle[False]
            self._idle = {True: [], False: []}
            self._open -= len(streams)
        for stream in streams:
            stream.close(wait=False)
