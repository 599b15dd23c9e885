"""Fixtures that build the tiny checkpoint and start real services (filled in by the server work)."""
