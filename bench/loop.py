"""How the Python benchmark processes run: as oada-jobs commands do."""

from oada_jobs._loop import run

__all__ = ["run"]
