"""rws: weight-space robustness patching."""

__version__ = "0.1.0"
