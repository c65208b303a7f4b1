"""Storage: SQL migrations (TimescaleDB and plain PostgreSQL), batch writes and the shared reads."""
