"""Output: rich tables for people, JSON for machines. Nothing here decides anything."""
