"""Operating refund-mcp: scrape-time state gauges, processor call metering, tracing and JSON logs.

Each module has one job; OpenTelemetry is imported only by `tracing` and only when it is switched on.
"""
