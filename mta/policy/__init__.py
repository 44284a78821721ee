"""What the edge decides: access tables, recipient validation, DNS blocklists, limits and
AUTH (DESIGN.md §7).  A library: smtpd asks, these modules answer; none of them runs a
daemon, and the decisions are pure functions of a session's facts and loaded tables."""
