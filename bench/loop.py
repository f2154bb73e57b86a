"""The event loop of the Python benchmark processes: the one oada-jobs commands use."""

from oada_jobs._loop import backend_options

__all__ = ["backend_options"]
