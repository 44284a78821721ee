"""The queue directory: the source of truth for every accepted message (DESIGN.md §3)."""
