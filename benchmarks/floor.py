"""gRPC's own floor for a streamed search here: a server that answers every SearchStream message
with one prepared reply and does nothing else (no parsing, no engine, no metrics).

    python -m benchmarks.floor PORT

`benchmarks.remote` starts it beside Curator's server and times the same SDK against both in
the same turns, so its figures split the remote overhead into what grpcio in Python costs on
this machine at that moment and what Curator adds.
"""

import sys
from concurrent import futures

from curator_proto.tcp import prefer_classic_tcp

prefer_classic_tcp()  # the same TCP stack as Curator's server, before grpc is imported

import grpc  # noqa: E402

from curator_proto.v1 import curator_pb2 as pb  # noqa: E402


def serve(port: int) -> None:
    info = pb.CollectionInfo(name="glove", dim=50, metric="cosine").SerializeToString()
    reply = pb.SearchStreamReply(result=pb.SearchResponse(ids=range(10), distances=[0.5] * 10, plan="tree"))
    reply = reply.SerializeToString()

    def search_stream(requests, context):
        for _ in requests:
            yield reply

    handlers = (
        grpc.method_handlers_generic_handler(
            "curator.v1.Search", {"SearchStream": grpc.stream_stream_rpc_method_handler(search_stream)}),
        grpc.method_handlers_generic_handler(
            "curator.v1.Collections", {"Describe": grpc.unary_unary_rpc_method_handler(lambda request, _: info)}),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=handlers)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
