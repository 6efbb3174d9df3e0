"""The Graph API stand-in of bench/e2e in a process of its own: zapstream.standin.GraphStandIn,
reporting each accepted reply's `sent` status back to the webhook (signed, as Meta does).

    PYTHONPATH=bench WHATSAPP_APP_SECRET=... python bench/e2e_peers/standin.py --port PORT

Besides the Graph API's POST /<version>/<phone_number_id>/messages it answers the bench:

    GET  /health                  200 once serving
    POST /bench/webhook?url=U     the webhook URL the statuses go to (set once the server under
                                  test has its port)
    GET  /bench/arrivals?since=N  the requests from the N-th on, as JSON [[kind, to, at], ...]:
                                  kind `text` (an accepted reply), `read` (a mark-read/typing
                                  request) or `other`; `to` as the request carries it; `at` the
                                  stand-in's time.time() on arrival

Served like the peers of bench/ingest (ingest_peers/serving.py: one uvicorn process, uvloop).
"""

from __future__ import annotations

import argparse
import os
from urllib.parse import parse_qs

import msgspec
from starlette.types import Receive, Scope, Send

from ingest_peers.serving import add_server_options, serve
from zapstream.standin import GraphStandIn, Received

# A request's kind in the arrivals.
TEXT, READ, OTHER = "text", "read", "other"


def kind_of(request: Received) -> str:
    if request.is_text and request.wamid:
        return TEXT
    if request.body.get("status") == "read":
        return READ
    return OTHER


class BenchStandIn:
    """GraphStandIn with the bench's routes in front of it (plain ASGI, as the stand-in)."""

    def __init__(self, graph: GraphStandIn) -> None:
        self.graph = graph
        self.arrivals: list[tuple[str, str, float]] = []
        graph.listeners.append(self._record)

    def _record(self, request: Received) -> None:
        self.arrivals.append((kind_of(request), request.to, request.at))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/bench/", "/health")):
            await self.graph(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            await _answer(send, b"ok\n")
        elif method == "GET" and path == "/bench/arrivals":
            since = int(parse_qs(scope["query_string"].decode()).get("since", ["0"])[0])
            await _answer(send, msgspec.json.encode(self.arrivals[since:]))
        elif method == "POST" and path == "/bench/webhook":
            self.graph.webhook_url = parse_qs(scope["query_string"].decode())["url"][0]
            await _answer(send, b"ok\n")
        else:
            await _answer(send, b"not found\n", status=404)


async def _answer(send: Send, body: bytes, status: int = 200) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_options(parser)
    args = parser.parse_args()
    graph = GraphStandIn(app_secret=os.environ["WHATSAPP_APP_SECRET"])
    serve(BenchStandIn(graph), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
