"""Scoring a client's model: LM-scored multiple choice, generation with Rouge-L, and what a run must record about
the evaluation protocol it follows (fidelity to the paper's code)."""
