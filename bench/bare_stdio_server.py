"""The cold-start floor: a bare MCPServer with one no-op tool, served on stdio.

Started as `python bench/bare_stdio_server.py`; its start is what the SDK alone costs (interpreter,
SDK imports, server set-up), against which `refund-mcp serve` is compared.
"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("bare")


@server.tool()
def noop(transaction_id: str) -> str:
    """Does nothing."""
    return "ok"


if __name__ == "__main__":
    server.run()
