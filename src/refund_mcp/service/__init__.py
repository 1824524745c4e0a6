"""The transport-free service layer: MCP tools, the CLI and webhooks are thin shells over it."""
