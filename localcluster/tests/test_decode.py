"""Request decoding as the API server's decoders do it (localcluster.apiserver.decode)."""

from __future__ import annotations

import json

import pytest

from localcluster.apiserver import decode
from localcluster.apiserver.status import ApiError


def test_duplicate_keys_are_reported_by_path_and_the_last_one_wins() -> None:
    body, dups = decode.loads(b'{"spec":{"code":"a","code":"b","items":[{"x":1,"x":2}]},"kind":"K"}')
    assert body == {"spec": {"code": "b", "items": [{"x": 2}]}, "kind": "K"}
    assert dups == ["spec.code", "spec.items[0].x"]
    assert decode.loads(b'{"a":1}') == ({"a": 1}, [])


def test_truncated_json_is_worded_as_go_words_it() -> None:
    with pytest.raises(json.JSONDecodeError) as err:
        decode.loads(b'{"apiVersion": ')
    assert decode.json_error_text(err.value, b'{"apiVersion": ') == "unexpected end of JSON input"


def test_unknown_metadata_fields() -> None:
    assert decode.unknown_meta_fields({"metadata": {"name": "a", "bogus": 1, "labels": {}}}) == ["metadata.bogus"]


@pytest.mark.parametrize(("kind", "query", "dry_run", "ctype", "message"), [
    ("CreateOptions", {"fieldValidation": "Sometimes"}, [], "",
     'CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: "Sometimes": supported values: '
     '"", "Ignore", "Strict", "Warn"'),
    ("CreateOptions", {}, ["Maybe"], "",
     'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: ["Maybe"]: supported values: "All"'),
    ("PatchOptions", {}, [], "application/apply-patch+yaml",
     'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'),
    ("PatchOptions", {"force": "true"}, [], "application/merge-patch+json",
     'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch'),
])
def test_bad_request_options_are_422_on_the_options_object(kind: str, query: dict[str, str], dry_run: list[str],
                                                           ctype: str, message: str) -> None:
    with pytest.raises(ApiError) as err:
        decode.check_write_options(kind, query, dry_run, ctype)
    assert err.value.code == 422
    assert err.value.message == message
    assert err.value.details is not None
    assert "name" not in err.value.details
    assert err.value.details["group"] == "meta.k8s.io"
    assert err.value.details["kind"] == kind


def test_good_options_pass_and_bad_propagation_is_refused() -> None:
    decode.check_write_options("PatchOptions", {"fieldManager": "m", "force": "true", "fieldValidation": "Strict"},
                               ["All"], "application/apply-patch+yaml")
    with pytest.raises(ApiError) as err:
        decode.check_delete_options({"propagationPolicy": "Sometimes"}, [])
    assert err.value.message == ('DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: '
                                 '"Sometimes": supported values: "Foreground", "Background", "Orphan", "nil"')


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_nesting_is_taken_to_go_s_bound_and_refused_beyond_it_as_go_words_it(opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    deepest = (opening * 10000 + "1" + closing * 10000).encode()
    value, _ = decode.loads(deepest)
    assert decode.loads_plain(deepest) == value
    too_deep = (opening * 10001 + "1" + closing * 10001).encode()
    bracket = opening[0]
    for parse in (decode.loads, decode.loads_plain):
        with pytest.raises(ValueError, match=f"^invalid character '\\{bracket}' exceeded max depth$"):
            parse(too_deep)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"s": "[" * 20000 + '\\"{' * 100}).encode()
    value, _ = decode.loads(text)
    assert value["s"].startswith("[[[")
