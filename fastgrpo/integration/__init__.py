"""trl integration (issue 4)."""
