"""``python -m oada_jobs``: the ``oada-jobs`` command.

Owns only the entry point; imports nothing but :mod:`oada_jobs.cli`.
"""

from .cli import main

main()
