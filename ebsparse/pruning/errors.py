"""The one exception type of the pruning package.

It subclasses ``ValueError`` so that the ``ebsparse`` command reports it as a user error (one line,
exit status 2) instead of a traceback: every case it covers is a bad ratio, mask, recipe or model.
"""

__all__ = ["PruningError"]


class PruningError(ValueError):
    """A pruning request that cannot be carried out; raised before any model is modified."""
