"""The master process and its supervision of children (DESIGN.md §1)."""
