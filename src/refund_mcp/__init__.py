"""refund-mcp: refunds for LLM support agents, over MCP."""

__version__ = "0.1.0"
