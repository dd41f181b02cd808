"""Console logging for the "amole" loggers, shared by the Flower ServerApp and the experiment runner."""

from __future__ import annotations

import logging


def setup_logging() -> logging.Logger:
    """Send the "amole" log to the console once; a second call (or a host that set handlers) changes nothing."""
    logger = logging.getLogger("amole")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger
