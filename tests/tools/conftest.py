"""Fixtures of the `tools` tier (defined in toolkit.py so test modules can import its helpers too)."""

from toolkit import helm, helm_env, render, run_helm

__all__ = ["helm", "helm_env", "render", "run_helm"]
