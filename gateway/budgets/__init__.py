"""Budgets and alert rules on LLM usage, and the notifications they send."""
