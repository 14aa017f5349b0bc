"""Decoding of the Kubernetes protobuf wire format for the few kinds kubectl creates with typed clients.

`kubectl create namespace|configmap|secret|serviceaccount` sends
`Content-Type: application/vnd.kubernetes.protobuf` and does not fall back to JSON, so the
emulator decodes those kinds (field numbers from k8s.io/api generated.proto). Other kinds get 415.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

MAGIC = b"k8s\x00"

# A field spec is (name, type, nested spec or None). Types: string, bytes, int, int0, bool, msg, time,
# map_ss (map<string,string>), map_sb (map<string,bytes>), rep_string, rep_msg.
Spec = dict[int, tuple[str, str, Any]]

OWNER_REF: Spec = {
    1: ("kind", "string", None), 3: ("name", "string", None), 4: ("uid", "string", None),
    5: ("apiVersion", "string", None), 6: ("controller", "bool", None), 7: ("blockOwnerDeletion", "bool", None),
}
OBJECT_META: Spec = {
    1: ("name", "string", None), 2: ("generateName", "string", None), 3: ("namespace", "string", None),
    5: ("uid", "string", None), 6: ("resourceVersion", "string", None), 7: ("generation", "int", None),
    8: ("creationTimestamp", "time", None), 9: ("deletionTimestamp", "time", None),
    10: ("deletionGracePeriodSeconds", "int", None), 11: ("labels", "map_ss", None),
    12: ("annotations", "map_ss", None), 13: ("ownerReferences", "rep_msg", OWNER_REF),
    14: ("finalizers", "rep_string", None),
}
LOCAL_REF: Spec = {1: ("name", "string", None)}
OBJECT_REF: Spec = {1: ("kind", "string", None), 2: ("namespace", "string", None), 3: ("name", "string", None),
                    4: ("uid", "string", None), 5: ("apiVersion", "string", None)}
KINDS: dict[tuple[str, str], Spec] = {
    ("v1", "Namespace"): {1: ("metadata", "msg", OBJECT_META),
                          2: ("spec", "msg", {1: ("finalizers", "rep_string", None)}),
                          3: ("status", "msg", {1: ("phase", "string", None)})},
    ("v1", "ConfigMap"): {1: ("metadata", "msg", OBJECT_META), 2: ("data", "map_ss", None),
                          3: ("binaryData", "map_sb", None), 4: ("immutable", "bool", None)},
    ("v1", "Secret"): {1: ("metadata", "msg", OBJECT_META), 2: ("data", "map_sb", None), 3: ("type", "string", None),
                       4: ("stringData", "map_ss", None), 5: ("immutable", "bool", None)},
    ("v1", "ServiceAccount"): {1: ("metadata", "msg", OBJECT_META), 2: ("secrets", "rep_msg", OBJECT_REF),
                               3: ("imagePullSecrets", "rep_msg", LOCAL_REF),
                               4: ("automountServiceAccountToken", "bool", None)},
}
DELETE_OPTIONS: Spec = {
    1: ("gracePeriodSeconds", "int0", None),
    2: ("preconditions", "msg", {1: ("uid", "string", None), 2: ("resourceVersion", "string", None)}),
    3: ("orphanDependents", "bool", None), 4: ("propagationPolicy", "string", None),
    5: ("dryRun", "rep_string", None),
}
KINDS[("v1", "DeleteOptions")] = DELETE_OPTIONS
KINDS[("meta.k8s.io/v1", "DeleteOptions")] = DELETE_OPTIONS
TYPE_META: Spec = {1: ("apiVersion", "string", None), 2: ("kind", "string", None)}
UNKNOWN: Spec = {1: ("typeMeta", "msg", TYPE_META), 2: ("raw", "bytes", None),
                 3: ("contentEncoding", "string", None), 4: ("contentType", "string", None)}
TIME: Spec = {1: ("seconds", "int", None), 2: ("nanos", "int", None)}


class ProtobufError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    out = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        val: Any
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wt == 1:
            val, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 5:
            val, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ProtobufError(f"unsupported wire type {wt}")
        out.append((num, wt, val))
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def decode_message(buf: bytes, spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, _wt, val in _fields(buf):
        if num not in spec:
            continue
        name, typ, sub = spec[num]
        if typ == "string":
            if val:  # proto3 encodes unset strings as empty; JSON omits them
                out[name] = val.decode()
        elif typ == "bytes":
            out[name] = bytes(val)
        elif typ == "int":
            if val:
                out[name] = _signed(val)
        elif typ == "int0":  # optional (pointer) integers: zero is meaningful
            out[name] = _signed(val)
        elif typ == "bool":
            out[name] = bool(val)
        elif typ == "msg":
            out[name] = decode_message(val, sub)
        elif typ == "time":
            t = decode_message(val, TIME)
            out[name] = dt.datetime.fromtimestamp(t.get("seconds", 0), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif typ in ("map_ss", "map_sb"):
            entry = decode_message(val, {1: ("k", "string", None), 2: ("v", "bytes", None)})
            v = entry.get("v", b"")
            out.setdefault(name, {})[entry.get("k", "")] = (
                v.decode() if typ == "map_ss" else base64.b64encode(v).decode())
        elif typ == "rep_string":
            out.setdefault(name, []).append(val.decode())
        elif typ == "rep_msg":
            out.setdefault(name, []).append(decode_message(val, sub))
    return out


def decode(body: bytes) -> dict[str, Any]:
    """Decode a `k8s\\0`-prefixed protobuf object into its JSON form; ProtobufError if unsupported."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing protobuf magic prefix")
    unknown = decode_message(body[len(MAGIC):], UNKNOWN)
    tm = unknown.get("typeMeta") or {}
    api_version, kind = tm.get("apiVersion", ""), tm.get("kind", "")
    spec = KINDS.get((api_version, kind))
    if spec is None:
        raise ProtobufError(f"protobuf decoding of {api_version}/{kind} is not supported")
    obj = decode_message(unknown.get("raw", b""), spec)
    return {"apiVersion": api_version, "kind": kind, **obj}


# -- encoding (a Status, for errors answered to protobuf-only clients) -------------------------------
def _enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_bytes(num: int, data: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(data)) + data


def _enc_str(num: int, value: Any) -> bytes:
    return _enc_bytes(num, str(value or "").encode())


def _enc_int(num: int, value: int) -> bytes:
    return _enc_varint(num << 3) + _enc_varint(value)


#: The content type of the answer (the request asks for `...spec.v2@v1.0+protobuf`).
OPENAPI_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def encode_openapi_v2(doc: dict[str, Any]) -> bytes:
    """An OpenAPI v2 document (gnostic's openapi_v2.Document) with its swagger version, info and empty paths:
    what client-go's OpenAPISchema() asks for (it accepts only protobuf)."""
    info = doc.get("info") or {}
    return (_enc_str(1, doc.get("swagger", "2.0"))
            + _enc_bytes(2, _enc_str(1, info.get("title")) + _enc_str(2, info.get("version")))
            + _enc_bytes(8, b""))


def encode_status(status: dict[str, Any]) -> bytes:
    """A metav1.Status as the API server writes it in protobuf: every non-pointer field, even when empty."""
    meta = status.get("metadata") or {}
    list_meta = _enc_str(1, meta.get("selfLink")) + _enc_str(2, meta.get("resourceVersion")) + \
        _enc_str(3, meta.get("continue"))
    body = _enc_bytes(1, list_meta) + _enc_str(2, status.get("status")) + _enc_str(3, status.get("message")) + \
        _enc_str(4, status.get("reason"))
    details = status.get("details")
    if isinstance(details, dict):
        d = _enc_str(1, details.get("name")) + _enc_str(2, details.get("group")) + _enc_str(3, details.get("kind"))
        for c in details.get("causes") or []:
            d += _enc_bytes(4, _enc_str(1, c.get("reason")) + _enc_str(2, c.get("message")) +
                            _enc_str(3, c.get("field")))
        d += _enc_int(5, int(details.get("retryAfterSeconds") or 0)) + _enc_str(6, details.get("uid"))
        body += _enc_bytes(5, d)
    body += _enc_int(6, int(status.get("code") or 0))
    type_meta = _enc_str(1, "v1") + _enc_str(2, "Status")
    return MAGIC + _enc_bytes(1, type_meta) + _enc_bytes(2, body) + _enc_str(3, "") + _enc_str(4, "")
