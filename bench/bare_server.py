"""The denominator of bench (a): a raw ASGI app answering every request with a constant V2-like
JSON body, on exactly the runtime's HTTP stack (uvicorn, httptools, uvloop, no access log).

It reads the request body like the runtime does, so the only difference left is the runtime's
own work: decoding, checking, the model call, encoding and metrics. ``--starlette`` serves the
same constant through a one-route Starlette app instead (the issue's reference figure).
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

BODY = (b'{"model_name":"tiny","outputs":[{"name":"probabilities","datatype":"FP32",'
        b'"shape":[1,3],"data":[0.3104969,0.2979814,0.3915216]}]}')
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def starlette_app() -> Any:
    """The same constant endpoint as a one-route Starlette app: the "bare endpoint" measured in
    the issue (17.9 k req/s on this machine kind), kept to compare with that figure."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Any) -> Response:
        await request.body()
        return Response(BODY, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST", "GET"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--starlette", action="store_true")
    args = parser.parse_args()
    target = starlette_app() if args.starlette else app
    uvicorn.run(target, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                lifespan="off", access_log=False, log_level="warning", server_header=False,
                proxy_headers=False)  # as the runtime


if __name__ == "__main__":
    main()
