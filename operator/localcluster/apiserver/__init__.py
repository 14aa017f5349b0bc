"""The Kubernetes API server emulator used by the local cluster.

`ApiServer` serves discovery, OpenAPI, CRUD/patch/watch for built-in kinds and CRD-defined custom
resources, pod logs, and debug endpoints for request logs and fault injection.
"""

from localcluster.apiserver.faults import FaultRule, Faults
from localcluster.apiserver.server import ApiServer, RequestRecord
from localcluster.apiserver.status import ApiError

__all__ = ["ApiError", "ApiServer", "FaultRule", "Faults", "RequestRecord"]
