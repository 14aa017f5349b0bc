"""execution-operator: run untrusted Python code in hardened sandbox pods on Kubernetes."""

__version__ = "0.1.0"
