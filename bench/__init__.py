"""Benchmarks for trioactors, each measured against raw Trio doing the same work.

Run ``python -m bench`` (or ``nox -s bench``); see ``bench/README.md``.
"""
