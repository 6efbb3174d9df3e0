"""The ceiling: a bare Starlette app that reads the POST body and answers 200, nothing else.

    python bench/ingest_peers/bare.py --port PORT

One uvicorn process, served like the other two servers of bench/ingest (see serving.py).
"""

from __future__ import annotations

import argparse

from serving import add_server_options, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    """Read the body (every server pays for that) and answer 200 without looking at it."""
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")


async def health(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def create_app() -> Starlette:
    return Starlette(routes=[
        Route("/webhook/whatsapp", receive, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_options(parser)
    args = parser.parse_args()
    serve(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
