"""The corpus steps the local API server deliberately answers differently, each with the reason.

Keys are `case/step`. Keep this list short: anything the real server does that our users or the operator
can meet belongs in the emulator, not here.
"""

EXCEPTIONS: dict[str, str] = {
    "pods.defaults/minimal": (
        "recorded on a fork whose ServiceAccount admission adds a fourth projected source (the ConfigMap "
        "openshift-service-ca.crt); upstream Kubernetes, which the emulator follows, adds only the token, "
        "kube-root-ca.crt and the namespace"
    ),
}
