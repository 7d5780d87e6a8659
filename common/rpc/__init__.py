"""gRPC for the platform's Python processes, on the HTTP/2 core the gateway uses (common/http2).

The client side (plugins calling their dependencies):

    channel.py     Channel: the connection, the multicallables, the metadata every call carries
    calls.py       the four kinds of call object
    status.py      how a call ended, and metadata both ways

The server side (what a plugin serves on):

    server.py      Server: a drop-in for the grpc.aio.Server that generated code and the plugin SDK use
    connection.py  RpcConnection: a client connection, and whether its transport has drained
    call.py        ServedCall: one client stream, its request messages, its response, its flow control
    dispatch.py    run_call: a method handler of each of the four shapes, and the status it ends with
    context.py     Context: the grpc.aio.ServicerContext a servicer gets
    wire.py        the server's side of gRPC's HTTP/2 mapping: header blocks, timeouts, metadata, messages
"""
