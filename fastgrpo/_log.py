"""The library's logger, and a once-per-process message for fallbacks to slower correct paths."""

from __future__ import annotations

import logging

logger = logging.getLogger("fastgrpo")
_said: set[str] = set()


def log_once(key: str, message: str, level: int = logging.WARNING) -> None:
    if key not in _said:
        _said.add(key)
        logger.log(level, message)
