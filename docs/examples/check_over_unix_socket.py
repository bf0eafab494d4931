#!/usr/bin/env python3
"""Ask wardgate for a decision from Python (grpcio) over its Unix socket.

    python3 check_over_unix_socket.py /run/wardgate/wardgate.sock \
        spiffe://hospital.example/ns/clinical/sa/ehr spiffe://hospital.example/ns/clinical/sa/lab GET /results/7

Prints `allow <rule>` or `deny <reason>` from wardgate's answer and exits 0 (a decision came
back) or 1 (the call failed). Needs `grpcio` and the Envoy API stubs of `xds-protos` (PyPI).

The one line that matters is `grpc.default_authority`: for a `unix:` target, grpcio sends the
socket path, percent-encoded, as the HTTP/2 `:authority` (e.g. `%2Frun%2Fwardgate%2F...`).
That is not a valid authority, and wardgate's HTTP/2 stack refuses the stream (the call fails
with UNAVAILABLE or INTERNAL). Any valid host name fixes it; wardgate does not look at it.
`--no-authority-fix` leaves the option out, to see the failure.
"""
import sys

import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc


def main(argv):
    fix = "--no-authority-fix" not in argv
    socket, source, destination, method, path = [a for a in argv if not a.startswith("--")]
    options = [("grpc.default_authority", "localhost")] if fix else []
    with grpc.insecure_channel(f"unix:{socket}", options=options) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        request = external_auth_pb2.CheckRequest(
            attributes=attribute_context_pb2.AttributeContext(
                source=attribute_context_pb2.AttributeContext.Peer(principal=source),
                destination=attribute_context_pb2.AttributeContext.Peer(principal=destination),
                request=attribute_context_pb2.AttributeContext.Request(
                    http=attribute_context_pb2.AttributeContext.HttpRequest(
                        method=method, path=path, host="example.svc"
                    )
                ),
            )
        )
        try:
            response = stub.Check(request, timeout=5)
        except grpc.RpcError as e:
            print(f"call failed: {e.code().name}: {e.details()}")
            return 1
    if response.status.code == 0:
        rule = [h.header.value for h in response.ok_response.headers if h.header.key == "x-wardgate-rule"]
        print("allow", rule[0] if rule else "")
    else:
        reason = [h.header.value for h in response.denied_response.headers if h.header.key == "x-wardgate-reason"]
        print("deny", reason[0] if reason else "")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
