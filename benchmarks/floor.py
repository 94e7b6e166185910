"""The floors under a remote search on this machine, to tell what Curator adds from what is not ours.

    python -m benchmarks.floor grpc PORT   # gRPC's floor: a search stream server that does nothing
    python -m benchmarks.floor echo PORT   # the machine's: a raw TCP echo

gRPC's floor: a server that answers every SearchStream message with one prepared reply (no
parsing, no engine, no metrics), and every SearchGroups message with one per search (parsed,
to count them). The machine's: a TCP echo that answers each message at once or
after spinning for as many microseconds as the message asks. On a virtual machine whose idle
vCPUs halt (Firecracker here, guest halt polling off), a process that waits more than a few
microseconds for an answer is woken through the host, and that wake costs more than the round
trip itself: `echo_round_trips` measures it as the round trip with 60 us of work on the other
side, less those 60 us, against the round trip with none. `benchmarks.remote` times all of it in
the same turns as Curator's server.
"""

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
ROOT = Path(__file__).resolve().parent.parent


def start(kind: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.floor", kind, str(port)], cwd=ROOT)


def guest_halt_poll_ns() -> int | None:
    """How long an idle vCPU of this guest polls before it halts (None: not a haltpoll guest)."""
    try:
        return int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return None


def serve_grpc(port: int) -> None:
    from curator_proto.tcp import prefer_classic_tcp

    prefer_classic_tcp()  # the same TCP stack as Curator's server, before grpc is imported
    from concurrent import futures

    import grpc

    from curator_proto.v1 import curator_pb2 as pb

    info = pb.CollectionInfo(name="glove", dim=50, metric="cosine").SerializeToString()
    one = pb.SearchStreamReply(result=pb.SearchResponse(ids=range(10), distances=[0.5] * 10, plan="tree"))
    reply = one.SerializeToString()

    def search_stream(requests, context):
        for _ in requests:
            yield reply

    def search_groups(groups, context):  # as many prepared replies as the group has searches
        for group in groups:
            yield pb.SearchGroupReply(replies=[one] * len(group.searches)).SerializeToString()

    handlers = (
        grpc.method_handlers_generic_handler("curator.v1.Search", {
            "SearchStream": grpc.stream_stream_rpc_method_handler(search_stream),
            "SearchGroups": grpc.stream_stream_rpc_method_handler(
                search_groups, request_deserializer=pb.SearchGroup.FromString)}),
        grpc.method_handlers_generic_handler(
            "curator.v1.Collections", {"Describe": grpc.unary_unary_rpc_method_handler(lambda request, _: info)}),
    )
    # a worker per open stream, as Curator's server: enough for every client thread's stream
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), handlers=handlers)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


_ASK = struct.Struct("<I")  # microseconds to spin before answering


def serve_echo(port: int) -> None:
    with socket.create_server(("127.0.0.1", port)) as listener:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                while message := conn.recv(64):
                    until = time.perf_counter() + _ASK.unpack_from(message)[0] * 1e-6
                    while time.perf_counter() < until:
                        pass
                    conn.sendall(message)


def echo_round_trips(port: int, work_us: int, n: int = 2000) -> np.ndarray:
    """Seconds of each of n round trips to the echo on `port`, which spins work_us before answering."""
    out = np.empty(n)
    ask = _ASK.pack(work_us)
    clock = time.perf_counter
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n):
            start = clock()
            conn.sendall(ask)
            conn.recv(64)
            out[i] = clock() - start
    return out


if __name__ == "__main__":
    {"grpc": serve_grpc, "echo": serve_echo}[sys.argv[1]](int(sys.argv[2]))
