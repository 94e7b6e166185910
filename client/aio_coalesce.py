"""The asyncio SDK's searches, coalesced: those its coroutines ask at the same moment travel as one
SearchGroup (see `coalesce.py` for why).

One task per channel, the pump, owns a SearchGroups stream and sends whatever has gathered as
one group, waits for the reply, answers each search, and goes on while searches keep gathering;
it ends when none are left and starts again with the next search. A lone search is sent at once,
as before, over the channel's SearchStream (`alone`). A search that is cancelled or times out does not touch the stream (the pump
owns it): its answer, when it comes, is dropped. The group's reply keeps the channel's deadline:
past it the stream is dropped and its searches fail with DEADLINE_EXCEEDED. When the server
refuses groups (an older server, or its stream limit), searches fall back to the channel's other
ways and groups are tried again later.
"""

import asyncio
import time

import grpc

from curator_proto import wire
from curator_proto.v1 import curator_pb2 as pb

from .aio_stream import RETRY_AFTER, HeldCall


class AsyncCoalescer(HeldCall):
    def __init__(self, stub, metadata, timeout: float, alone):
        super().__init__(stub, metadata, timeout)
        self._alone = alone
        self._gathered: list[tuple[pb.SearchRequest, asyncio.Future]] = []
        self._pump: asyncio.Task | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._retry_at

    async def search(self, request: pb.SearchRequest) -> pb.SearchStreamReply | None:
        """The search's reply (its result or its error), or None: search another way."""
        answer = asyncio.get_running_loop().create_future()
        self._gathered.append((request, answer))
        if self._pump is None:
            self._pump = asyncio.create_task(self._send_gathered())
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(answer)
        except TimeoutError:
            raise wire.exception("DEADLINE_EXCEEDED", None, f"no reply within the {self._timeout} s deadline") from None

    async def _send_gathered(self) -> None:
        try:
            while self._gathered:
                group, self._gathered = self._gathered, []
                if len(group) == 1:
                    replies = [await self._alone(group[0][0])]
                else:
                    replies = await self._exchange([request for request, _ in group])
                for i, (_, answer) in enumerate(group):
                    if not answer.done():
                        answer.set_result(None if replies is None else replies[i])
        finally:
            self._pump = None
            for _, answer in self._gathered:  # the pump was cancelled (the channel closes)
                if not answer.done():
                    answer.set_result(None)
            self._gathered = []

    async def _exchange(self, requests: list) -> list | None:
        try:
            if self._call is None:
                self._call = self._stub.SearchGroups(metadata=self._metadata)
            async with asyncio.timeout(self._timeout):
                await self._call.write(pb.SearchGroup(searches=requests))
                reply = await self._call.read()
        except TimeoutError:
            self._drop(0.0)
            late = pb.SearchStreamReply(error=pb.Failure(
                code="DEADLINE_EXCEEDED", message=f"no reply within the {self._timeout} s deadline"))
            return [late] * len(requests)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            # CANCELLED: the server took an idle stream back (ask again now); else refused or broken
            code = error.code() if isinstance(error, grpc.aio.AioRpcError) else grpc.StatusCode.CANCELLED
            self._drop(0.0 if code == grpc.StatusCode.CANCELLED else RETRY_AFTER)
            return None
        if reply is grpc.aio.EOF or len(reply.replies) != len(requests):  # the server is stopping
            self._drop(RETRY_AFTER)
            return None
        return list(reply.replies)

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self._drop(0.0)
