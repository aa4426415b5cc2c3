"""The relay's HTTP API, one module per area; each declares a ``routes`` table."""
