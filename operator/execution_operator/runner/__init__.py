"""The sandbox runner: `python -m execution_operator.runner` inside the sandbox image.

Kept import-light on purpose: the runner's start-up time is part of every execution's latency.
"""
