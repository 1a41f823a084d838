"""The denominator of bench (a): a raw ASGI app answering every request with a constant V2-like
JSON body, on exactly the runtime's HTTP stack (uvicorn, httptools, uvloop, no access log).

It reads the request body like the runtime does, so the only difference left is the runtime's
own work: decoding, checking, the model call, encoding and metrics. ``--starlette`` serves the
same constant through a one-route Starlette app instead (the issue's reference figure);
``--runtime-http`` serves it on the runtime's own HTTP layer (mlship_runtime.connection) instead
of uvicorn's, answering in one call as the runtime's app does: what that layer costs alone.
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


async def answering_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``app`` answering through ``scope["mlship.answer"]`` where the server offers it."""
    from mlship_runtime.asgi import respond

    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await respond(scope, send, 200, BODY, [(b"content-type", b"application/json")])


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
    parser.add_argument("--runtime-http", action="store_true")
    args = parser.parse_args()
    target = starlette_app() if args.starlette else answering_app if args.runtime_http else app
    http: Any = "httptools"
    if args.runtime_http:
        from mlship_runtime.connection import connection_class
        from mlship_runtime.server import connection_limits
        from mlship_runtime.settings import RuntimeSettings

        http = connection_class(connection_limits(RuntimeSettings(model="bare")))
    uvicorn.run(target, host="127.0.0.1", port=args.port, loop="uvloop", http=http,
                lifespan="off", access_log=False, log_level="warning", server_header=False,
                proxy_headers=False)  # as the runtime


if __name__ == "__main__":
    main()
