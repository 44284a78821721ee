"""The queue directory: the storage library every process shares (DESIGN.md §3, §6): spool
layout, segments, message files, envelopes, state, durable writes and the messages processes
send each other."""
