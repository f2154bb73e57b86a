"""The package version, in a module of its own so subpackages can import it
without importing the whole package (no import cycle).

Owns the version string only; imports nothing and must not.
"""

__version__ = "0.1.0"
