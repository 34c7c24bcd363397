"""Sampling: consistent head sampling by trace id (and, later, tail sampling by whole traces)."""
