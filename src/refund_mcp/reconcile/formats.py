"""The reconciliation report's formats, on their own so the command line can offer them without the engine."""

FORMATS = ("table", "csv", "json")
