"""The SMTP server: the only code that touches client transports (DESIGN.md §2)."""
