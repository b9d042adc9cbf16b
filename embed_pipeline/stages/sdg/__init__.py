"""Synthetic data generation: queries whose answers are known chunks (``offline`` needs no LLM; ``io`` writes them)."""
