"""The application layer: the ``prune-gym`` command line and the jobs behind it."""
