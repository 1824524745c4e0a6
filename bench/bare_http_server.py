"""The HTTP floor: a bare MCPServer with one no-op tool over streamable HTTP (stateless), with /healthz.

Started as `python bench/bare_http_server.py PORT` (127.0.0.1 only); its calls/s with N clients is what
the SDK and uvicorn alone allow on this machine, against which refunds/s over HTTP is compared.
"""

import sys

import uvicorn
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from mcp.server.mcpserver import MCPServer

server = MCPServer("bare")


@server.tool()
def noop(transaction_id: str) -> str:
    """Does nothing."""
    return "ok"


@server.custom_route("/healthz", methods=["GET"])
async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


if __name__ == "__main__":
    port = int(sys.argv[1])
    app = server.streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, timeout_keep_alive=30)
