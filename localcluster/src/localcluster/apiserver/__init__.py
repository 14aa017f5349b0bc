"""The Kubernetes API server emulator used by the local cluster.

`ApiServer` serves, over plain HTTP on 127.0.0.1:
- discovery (`/api`, `/apis`, group and group-version lists), `/version`, `/healthz|readyz|livez`,
  OpenAPI v3 (`/openapi/v3`, per group-version documents; CRD schemas for `kubectl explain`);
- built-in kinds (see `resources.builtin_resources`) and custom resources of any installed CRD;
- create/get/list/watch/update/patch (merge, JSON, strategic for built-ins, server-side apply)/delete,
  with uid, one global resourceVersion, generation, generateName, finalizers, graceful pod deletion,
  owner-reference garbage collection, namespace and CRD cascades, ResourceQuota pod counts,
  RuntimeClass and ServiceAccount admission, CRD defaulting/pruning/validation (`localcluster.schema`);
- label/field selectors, limit/continue, watch resume from a resourceVersion (410 when compacted),
  bookmarks, Table output with printer columns, `pods/log` from the node's log files;
- `request_log`, `counters`, `faults` (FaultRule) and `drop_watches`, also over `/debug/*`.

Not emulated: authentication/authorization (every access review is allowed), admission webhooks,
controllers other than the garbage collector, exec/attach/port-forward, shared storage between
core and events.k8s.io Events, protobuf bodies other than Namespace, ConfigMap, Secret,
ServiceAccount and DeleteOptions (kubectl's typed `create` commands for other kinds get 415).
"""

from localcluster.apiserver.faults import FaultRule, Faults
from localcluster.apiserver.server import ApiServer, RequestRecord
from localcluster.apiserver.status import ApiError

__all__ = ["ApiError", "ApiServer", "FaultRule", "Faults", "RequestRecord"]
