"""Usage accounting: attribution of LLM calls, rollups and their store."""
