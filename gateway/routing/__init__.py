"""Routing: which sinks each span goes to (`routes:`), decided by `match` conditions."""
