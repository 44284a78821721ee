"""What the edge decides (DESIGN.md §6, §7): access tables, recipient validation, DNS
blocklists, per-client limits and AUTH.  A library: smtpd asks, these modules answer, as
functions of a session's facts and tables loaded from files; no daemon of its own (the
limits' owner, anvil, is one, and imports this)."""
