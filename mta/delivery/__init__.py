"""Delivery: next-hop routing, MX lookup, outbound SMTP/LMTP, local Maildir (DESIGN.md §4)."""
