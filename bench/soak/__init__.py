"""Soak: the daemon under a steady half-max load for M minutes; do its memory and latency stay flat
and is nothing lost?

``python -m bench.soak --minutes M [--rate R] [--model DIR] [-o OUT.json]`` (``make soak``: 20
minutes into ``bench/soak.json``; ``tests/test_reliability_soak.py`` runs 2 minutes with the same
checks). :mod:`.run` sets up and samples, :mod:`.feed` sends the load, :mod:`.criteria` judges it.
Exit status 0 when flat and nothing was lost.
"""
