"""Robustness evaluation: corruption kernels, adversarial attacks, before/after evaluation."""
