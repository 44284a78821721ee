"""The edge's decisions library (DESIGN.md §6, §7): what smtpd decides about a client, as
functions of the session's facts and tables loaded from files (password hashes, sender
logins).  No daemon of its own and no I/O beyond reading its tables: ``mta.server``
imports it; it imports only the libraries below it (configuration, protocol replies)."""
