"""The size limits a real control plane puts on a write, by layer.

- The API server refuses a request body over 3 MiB: 413 `Request entity too large: limit is 3145728`.
- etcd refuses a request over `--max-request-bytes` (default 1.5 MiB): the API server passes that on as
  500 with no reason, `etcdserver: request is too large`.
- The API server's etcd client refuses to send a gRPC message over 2 MiB: 500 `rpc error: code =
  ResourceExhausted desc = trying to send message larger than max (N vs. 2097152)`.

The etcd request is a transaction holding the key twice (a compare and a put) and the stored object
(JSON for custom resources, with an ending newline and without resourceVersion); its size is computed
from the protobuf framing of those fields.
"""

from __future__ import annotations

from localcluster.apiserver.status import ApiError

REQUEST_BODY_LIMIT = 3 * 1024 * 1024
ETCD_REQUEST_LIMIT = 1536 * 1024
GRPC_SEND_LIMIT = 2 * 1024 * 1024


def check_body(size: int) -> None:
    if size > REQUEST_BODY_LIMIT:
        raise ApiError(413, f"Request entity too large: limit is {REQUEST_BODY_LIMIT}", "RequestEntityTooLarge")


def etcd_key(group: str, plural: str, namespace: str, name: str, custom: bool) -> str:
    """`/registry/[group/]plural/[namespace/]name` (built-in kinds are stored without their group)."""
    parts = ["/registry"] + ([group] if custom and group else []) + [plural] + ([namespace] if namespace else [])
    return "/".join([*parts, name])


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _field(payload: int) -> int:
    """A length-delimited protobuf field of `payload` bytes: tag, length, payload."""
    return 1 + _varint_len(payload) + payload


def txn_size(key: str, value_size: int, mod_revision: int = 0) -> int:
    """The marshalled TxnRequest of a create (compare mod_revision 0) or update (compare it, else get)."""
    k = len(key.encode())
    compare = 2 + _field(k) + 1 + _varint_len(mod_revision)  # target MOD, key, mod_revision
    put = _field(k) + _field(value_size)
    size = _field(compare) + _field(_field(put))
    if mod_revision:
        size += _field(_field(_field(k)))  # else: a range request for the key
    return size


def check_storable(key: str, value_size: int, mod_revision: int = 0) -> None:
    """Raise what the real server answers when etcd (or the gRPC client in front of it) refuses the write."""
    size = txn_size(key, value_size, mod_revision)
    if size > GRPC_SEND_LIMIT:
        raise ApiError(500, "rpc error: code = ResourceExhausted desc = trying to send message larger than max "
                            f"({size} vs. {GRPC_SEND_LIMIT})", "")
    if size > ETCD_REQUEST_LIMIT:
        raise ApiError(500, "etcdserver: request is too large", "")
