"""execution-operator: run untrusted Python code in hardened sandbox pods on Kubernetes."""

GROUP = "sandbox.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = "execution-operator"

__version__ = "0.1.0"
