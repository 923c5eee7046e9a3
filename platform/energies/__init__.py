"""Batched energies."""
