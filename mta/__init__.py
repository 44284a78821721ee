"""mta: a production mail transfer agent (SMTP server and relay)."""

__version__ = "0.1.0"
