"""The pieces behind ``bench/gateway.py``: machine facts, processes, load generators, targets, report."""
