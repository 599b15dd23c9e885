"""The reference service and the pieces an operator's own service can import."""
