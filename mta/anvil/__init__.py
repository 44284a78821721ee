"""anvil: the node's owner of per-client counters (Postfix's anvil(8)), one process per
node that every smtpd worker asks (mta/policy/anvil_wire.py)."""
