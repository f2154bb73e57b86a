"""The package version, in a module of its own so subpackages can import it
without importing the whole package (no import cycle)."""

__version__ = "0.1.0"
