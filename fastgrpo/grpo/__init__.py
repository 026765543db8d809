"""GRPO loss (issue 3)."""
