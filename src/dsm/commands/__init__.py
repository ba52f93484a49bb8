"""Implementations of the ``dsm`` sub-commands, one module each."""
