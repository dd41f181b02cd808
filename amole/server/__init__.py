"""Server algorithms that need no model: RSEA assignment and its planner, per-expert aggregation, routing codes and
the DP mechanism. Importable without transformers, so a ServerApp stays light."""
