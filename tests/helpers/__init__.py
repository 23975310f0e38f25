"""Builders and workers shared by several test files (not tests themselves)."""
