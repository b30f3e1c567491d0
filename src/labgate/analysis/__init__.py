"""Experiment analysis: statistics (``stats``) and the per-variant report from the history (``experiment``).

Imports numpy and scipy (the ``experiments`` extra); the gateway's request path never imports this package.
"""
