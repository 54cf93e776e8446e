"""The subcommands of ``ebsparse`` (front layer), one module each.

A command module defines ``NAME``, ``HELP``, ``configure(parser)`` and ``run(args) -> int``;
:mod:`ebsparse.cli` registers the modules listed in :data:`MODULES` (in this order, which is the
order of ``ebsparse --help``). Commands never import :mod:`ebsparse.cli`, and nothing below the
front layer imports a command. Heavy imports (torch, the models) happen inside ``run`` so that
``ebsparse --help`` stays instant.
"""

MODULES = ("info", "train", "train_autoencoder", "sample", "fid", "prune", "eb_train", "s2s_table", "demo",
           "export")
