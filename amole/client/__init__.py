"""One client's round without Flower: local training, answer-position losses and the routing statistics for RSEA."""
