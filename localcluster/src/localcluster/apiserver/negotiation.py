"""Output media type negotiation (`Accept`): plain JSON, a Table, PartialObjectMetadata, or 406.

Like the real server: the clauses are tried by preference (q-value, then order); `as=Table` and
`as=PartialObjectMetadata[List]` of group meta.k8s.io, versions v1 and v1beta1, ask for a conversion;
a clause with an unknown conversion or parameter is skipped; when no clause is acceptable the answer is
406 NotAcceptable. Custom resources cannot be served as protobuf (only their Tables and metadata
could), so a protobuf-only Accept on them is 406, with the Status itself in protobuf as the client asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from localcluster.apiserver import protobuf
from localcluster.apiserver.status import ApiError

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
SERVED = (JSON, YAML, PROTOBUF)
_CONVERSIONS = {"Table", "PartialObjectMetadata", "PartialObjectMetadataList"}
_META_VERSIONS = ("v1", "v1beta1")
_KNOWN_PARAMS = {"as", "g", "v", "pretty", "stream", "q", "charset"}


@dataclass
class Output:
    """What to answer with: `as_` is "", "Table", "PartialObjectMetadata" or "PartialObjectMetadataList".
    `headers_sent`: a Table watch has sent its column definitions (later events have none)."""

    media_type: str = JSON
    as_: str = ""
    version: str = "v1"
    headers_sent: bool = False

    @property
    def api_version(self) -> str:
        return f"meta.k8s.io/{self.version}"


class NotAcceptable(ApiError):
    """406; `protobuf` when the client accepts only protobuf, so the Status goes out in protobuf."""

    def __init__(self, protobuf_body: bool) -> None:
        super().__init__(406, "only the following media types are accepted: " + ", ".join(SERVED), "NotAcceptable")
        self.protobuf_body = protobuf_body

    def body(self) -> bytes:
        return protobuf.encode_status(self.to_status())


def _clauses(accept: str) -> list[tuple[str, dict[str, str]]]:
    """(type/subtype, params) by preference: q-value descending, then as written."""
    out: list[tuple[float, int, str, dict[str, str]]] = []
    for i, part in enumerate(accept.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        params = {}
        for p in pieces[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            out.append((-q, i, pieces[0].lower(), params))
    return [(t, p) for _, _, t, p in sorted(out)]


def negotiate(accept: str, custom: bool, verb: str) -> Output:
    """The output for a request's `Accept` header; raises NotAcceptable (406) when none is acceptable."""
    if not accept.strip():
        return Output()
    clauses = _clauses(accept)
    converted_write = False
    for media, params in clauses:
        if media in ("*/*", "application/*"):
            media = JSON
        if media not in SERVED or set(params) - _KNOWN_PARAMS:
            continue
        as_ = params.get("as", "")
        if as_:
            if as_ not in _CONVERSIONS or params.get("g") != "meta.k8s.io" or params.get("v") not in _META_VERSIONS:
                continue
            if verb not in ("get", "list", "watch"):
                converted_write = True  # this emulator answers writes with the object itself
                continue
            if as_ == "PartialObjectMetadataList" and verb == "get":
                continue
            if as_ == "PartialObjectMetadata" and verb == "list":
                continue
            return Output(media, as_, params["v"])
        if media == PROTOBUF and custom:
            continue
        return Output(media)
    if converted_write:
        return Output()
    only_protobuf = bool(clauses) and all(m == PROTOBUF for m, _ in clauses)
    raise NotAcceptable(only_protobuf)
