"""Example oada-jobs services (not part of the installed package)."""
