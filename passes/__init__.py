"""Graph passes: one transformation or analysis per module."""
