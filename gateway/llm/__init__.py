"""LLM semantics: recognising provider calls in every dialect, and what they cost."""
