"""Single searches over one open SearchStream per channel (the asyncio SDK's fast path).

As in the blocking SDK (`stream.py`), a message on an open stream costs less than a unary call:
measured here (benchmarks/remote.py), p50 0.46 against 0.79 ms a search. One search at a time
uses the stream; a search that finds it busy with another coroutine's, or finds no stream (the
server refused one, closed an idle one, or went away), is made as a unary Search call with that
call's retries, and the stream is asked for again later. A search on the stream keeps the
channel's deadline. A search cancelled or timed out halfway ends the stream: its late reply
must never be read as the next search's.
"""

import asyncio
import time

import grpc

from curator_proto import wire

RETRY_AFTER = 5.0  # seconds before asking again for a stream the server refused or broke


class HeldCall:
    """A stream call kept open between searches, and when to open one again after it was dropped."""

    def __init__(self, stub, metadata, timeout: float):
        self._stub, self._metadata, self._timeout = stub, metadata, timeout
        self._call = None
        self._retry_at = 0.0

    def _drop(self, retry_in: float) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self._retry_at = time.monotonic() + retry_in


class AsyncSearchStream(HeldCall):
    def __init__(self, stub, metadata, timeout: float):
        super().__init__(stub, metadata, timeout)
        self._busy = False

    async def ask(self, request):
        """The reply to `request`, or None when the stream cannot take it (make a unary call)."""
        if self._busy or time.monotonic() < self._retry_at:
            return None
        self._busy = True
        try:
            if self._call is None:
                self._call = self._stub.SearchStream(metadata=self._metadata)
            async with asyncio.timeout(self._timeout):
                await self._call.write(request)
                reply = await self._call.read()
        except asyncio.CancelledError:
            self._drop(0.0)
            raise
        except TimeoutError:
            self._drop(RETRY_AFTER)
            raise wire.exception("DEADLINE_EXCEEDED", None, f"no reply within the {self._timeout} s deadline") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            # CANCELLED, or already finished: the server took an idle stream back; ask again now
            code = error.code() if isinstance(error, grpc.aio.AioRpcError) else grpc.StatusCode.CANCELLED
            self._drop(0.0 if code == grpc.StatusCode.CANCELLED else RETRY_AFTER)
            return None
        finally:
            self._busy = False
        if reply is grpc.aio.EOF:  # the server ended the stream (it is stopping)
            self._drop(RETRY_AFTER)
            return None
        return reply

    def close(self) -> None:
        self._drop(0.0)
