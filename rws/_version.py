"""The package version (one place; the facade and provenance read it here)."""

__version__ = "0.1.0"
