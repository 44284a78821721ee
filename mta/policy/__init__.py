"""What the edge decides: per-client limits, access tables, SMTP AUTH (DESIGN.md §6, §7).

A library: smtpd (``mta.server``) and the daemons that own shared state (``mta.anvil``)
import it; it imports no daemon.
"""
