"""Persistence: engine set-up, tables, migrations, queries."""
