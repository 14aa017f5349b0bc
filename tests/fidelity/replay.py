"""Replay the fidelity corpus (answers a real kube-apiserver gave) against the local API server.

The corpus (`corpus/cases.jsonl`, format in `corpus/README.md`) holds requests and the real server's
normalised answers. The cases run in file order in one fresh API server; each answer goes through the
corpus's own normaliser (`corpus/normalize.py`) and is compared with the recorded one by the rules the
corpus states. The result is a list of `StepResult`s: which step matched, and how the others differ.

Run as a program for a readable report (`python -m tests.fidelity.replay --area 2-cr -v`);
`tests/fidelity/test_replay.py` runs it under pytest and prints `matched X/Y`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import http.client
import json
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fidelity.corpus import normalize

CORPUS = Path(__file__).parent / "corpus" / "cases.jsonl"
USER_AGENT = "fidelity-recorder/1"
TEMPLATE = re.compile(r"\{\{([^{}]+)\}\}")
#: how long one plain request may take before the step counts as failed
REQUEST_TIMEOUT = 30.0
#: the last run's `summary` line, printed at the end of a pytest run (conftest.py)
LAST_SUMMARY = ""


def load_cases(path: Path = CORPUS) -> list[dict[str, Any]]:
    """The corpus's cases in file order."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class StepResult:
    """The outcome of one compared step (a watch's `during` steps are results of their own)."""

    case: str
    step: str
    role: str
    problems: list[str] = field(default_factory=list)
    #: differences that do not fail the step (a setup step's body, `strict: false`)
    warnings: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.case}/{self.step}"

    @property
    def matched(self) -> bool:
        return not self.problems


@dataclass
class Answer:
    """What the server said to one request, before normalisation."""

    code: int
    content_type: str = ""
    warnings: list[str] = field(default_factory=list)
    raw: bytes = b""
    body: Any = None  # parsed JSON, or None
    # watch steps
    events: list[dict[str, Any]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)
    ended_by: str = ""
    until_met: bool = False


# --------------------------------------------------------------------------------------- the server
@contextmanager
def local_apiserver() -> Iterator[str]:
    """A fresh local API server on its own event loop in a thread; yields its URL."""
    from localcluster.apiserver import ApiServer

    ready = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop

        async def serve() -> None:
            with tempfile.TemporaryDirectory(prefix="fidelity-") as state:
                server = ApiServer(state)
                box["url"] = await server.start()
                box["stop"] = asyncio.Event()
                ready.set()
                await box["stop"].wait()
                await server.stop()

        try:
            loop.run_until_complete(serve())
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, which raises it
            box["error"] = e
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="fidelity-apiserver", daemon=True)
    thread.start()
    if not ready.wait(60) or "error" in box:
        raise RuntimeError(f"the local API server did not start: {box.get('error')!r}")
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


# --------------------------------------------------------------------------------------- templates
def _lookup(answers: dict[str, Any], ref: str) -> Any:
    parts = [p.replace("~", ".") for p in ref.split(".")]
    if parts[0] not in answers:
        raise KeyError(f"template {{{{{ref}}}}}: no earlier step {parts[0]!r}")
    node = answers[parts[0]]
    for part in parts[1:]:
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"template {{{{{ref}}}}}: no {part!r}")
    return node


def fill(value: Any, answers: dict[str, Any], url_encode: bool = False) -> Any:
    """`value` with its `{{step.path}}` templates replaced; a string that is only a template takes the
    referenced value's JSON type."""
    if isinstance(value, dict):
        return {k: fill(v, answers, url_encode) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, answers, url_encode) for v in value]
    if not isinstance(value, str):
        return value
    whole = TEMPLATE.fullmatch(value)
    if whole and not url_encode:
        return _lookup(answers, whole.group(1))

    def sub(m: re.Match[str]) -> str:
        v = _lookup(answers, m.group(1))
        text = v if isinstance(v, str) else json.dumps(v)
        return urllib.parse.quote(text, safe="") if url_encode else text

    return TEMPLATE.sub(sub, value)


def _set_pointer(doc: Any, pointer: str, value: Any) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    node = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def request_bytes(request: dict[str, Any], answers: dict[str, Any]) -> bytes | None:
    """The body to send, exactly as the recorder serialised it."""
    if "body_text" in request:
        return str(fill(request["body_text"], answers)).encode()
    if "body" not in request:
        return None
    body = fill(copy.deepcopy(request["body"]), answers)
    for e in request.get("expand") or []:
        _set_pointer(body, e["pointer"], e["prefix"] + e["repeat"] * e["count"] + e["suffix"])
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------- HTTP
class Http:
    """Raw HTTP/1.1 to the server, one connection a request (as the recorder did)."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80

    def open(self, request: dict[str, Any], answers: dict[str, Any],
             timeout: float = REQUEST_TIMEOUT) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        path = fill(request["path"], answers, url_encode=True)
        body = request_bytes(request, answers)
        headers = {"User-Agent": USER_AGENT, **request.get("headers", {})}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.request(request["method"], path, body=body, headers=headers)
        return conn, conn.getresponse()

    def send(self, request: dict[str, Any], answers: dict[str, Any]) -> Answer:
        conn, resp = self.open(request, answers)
        try:
            return _answer(resp, resp.read())
        finally:
            conn.close()


def _answer(resp: http.client.HTTPResponse, raw: bytes) -> Answer:
    body: Any = None
    ctype = resp.getheader("Content-Type", "") or ""
    if "json" in ctype:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    return Answer(code=resp.status, content_type=ctype, warnings=resp.headers.get_all("Warning") or [],
                  raw=raw, body=body)


def _event_matches(event: dict[str, Any], until: dict[str, Any]) -> bool:
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    if "type" in until and event.get("type") != until["type"]:
        return False
    if "name" in until and meta.get("name") != until["name"]:
        return False
    if "annotation" in until and until["annotation"] not in (meta.get("annotations") or {}):
        return False
    if "condition" in until:
        conditions = (obj.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == until["condition"] and c.get("status") == "True" for c in conditions):
            return False
    return True


# --------------------------------------------------------------------------------------- comparing
def _drop_path(body: Any, parts: list[str]) -> None:
    if not parts or body is None:
        return
    head, rest = parts[0], parts[1:]
    if head == "*" and isinstance(body, list):
        for item in body:
            _drop_path(item, rest)
    elif isinstance(body, dict) and head in body:
        if rest:
            _drop_path(body[head], rest)
        else:
            del body[head]


def _without(body: Any, paths: list[str]) -> Any:
    body = copy.deepcopy(body)
    for p in paths:
        _drop_path(body, p.split("."))
    return body


def _diff(want: Any, got: Any, path: str = "", out: list[str] | None = None, limit: int = 12) -> list[str]:
    """Readable differences between two JSON values (at most `limit`)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(want, dict) and isinstance(got, dict):
        for k in want:
            if k not in got:
                out.append(f"{path}.{k}: missing (want {_short(want[k])})")
            else:
                _diff(want[k], got[k], f"{path}.{k}", out, limit)
        out.extend(f"{path}.{k}: unexpected {_short(got[k])}" for k in got if k not in want)
    elif isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            _diff(a, b, f"{path}[{i}]", out, limit)
    elif want != got:
        out.append(f"{path or '.'}: want {_short(want)}, got {_short(got)}")
    return out[:limit]


def _short(v: Any, n: int = 300) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= n else text[:n] + "..."


def _is_failure(body: Any) -> bool:
    return isinstance(body, dict) and body.get("kind") == "Status" and body.get("status") == "Failure"


def _causes(status: dict[str, Any], with_messages: bool) -> list[dict[str, Any]]:
    keys = ("reason", "message", "field") if with_messages else ("reason", "field")
    return [{k: c.get(k) for k in keys} for c in (status.get("details") or {}).get("causes") or []]


def compare_status(want: dict[str, Any], got: Any, compare: dict[str, Any]) -> list[str]:
    """An error answer: reason, code, details and message as `compare` asks."""
    if not _is_failure(got):
        return [f"want a Failure Status, got {_short(got)}"]
    problems = []
    if compare.get("reason") and (want.get("reason"), want.get("code")) != (got.get("reason"), got.get("code")):
        problems.append(f"reason/code: want {want.get('reason')}/{want.get('code')}, "
                        f"got {got.get('reason')}/{got.get('code')}")
    if compare.get("details"):
        wd, gd = want.get("details") or {}, got.get("details") or {}
        for k in ("name", "group", "kind", "uid"):
            if wd.get(k) != gd.get(k):
                problems.append(f"details.{k}: want {wd.get(k)!r}, got {gd.get(k)!r}")
        with_messages = compare.get("cause_messages", True)
        wc, gc = _causes(want, with_messages), _causes(got, with_messages)
        if compare.get("causes") == "sorted":
            wc, gc = (sorted(x, key=lambda c: json.dumps(c, sort_keys=True)) for x in (wc, gc))
        if wc != gc:
            problems.append(f"causes: want {_short(wc, 800)}, got {_short(gc, 800)}")
    how = compare.get("message")
    wm, gm = want.get("message", ""), got.get("message", "")
    if how in ("exact", "normalized") and wm != gm:
        problems.append(f"message: want {wm!r}, got {gm!r}")
    elif how == "prefix" and not str(gm).startswith(compare["message_prefix"]):
        problems.append(f"message: want prefix {compare['message_prefix']!r}, got {gm!r}")
    return problems


def compare_body(want: Any, got: Any, compare: dict[str, Any]) -> list[str]:
    """A non-error answer: the normalised bodies, whole (less `ignore`) or on `body_paths`."""
    if compare.get("body") == "normalized":
        ignore = compare.get("ignore", ["metadata.managedFields"])
        want, got = _without(want, ignore), _without(got, ignore)
    elif not compare.get("body_paths"):
        return []
    return _diff(want, got)


# --------------------------------------------------------------------------------------- replaying
class Replayer:
    """Runs cases in order against one server, keeping what later cases need (nothing but the server)."""

    def __init__(self, url: str) -> None:
        self.http = Http(url)

    def run_case(self, case: dict[str, Any]) -> list[StepResult]:
        norm = normalize.Norm()
        answers: dict[str, Any] = {}
        results: list[StepResult] = []
        for step in case["steps"]:
            results.extend(self._run_step(case["name"], step, norm, answers))
        return results

    def _run_step(self, case: str, step: dict[str, Any], norm: normalize.Norm,
                  answers: dict[str, Any]) -> list[StepResult]:
        result = StepResult(case, step["name"], step["role"])
        request, compare = step["request"], step.get("compare", {})
        extra: list[StepResult] = []
        try:
            if step["role"] == "wait":
                answer = self._wait(request, answers)
            elif "watch" in request:
                answer = self._watch(case, step, norm, answers, extra)
            else:
                answer = self.http.send(request, answers)
        except (OSError, http.client.HTTPException, KeyError, ValueError) as e:
            result.problems.append(f"request failed: {type(e).__name__}: {e}")
            return [*extra, result]
        answers[step["name"]] = answer.events if "watch" in request and answer.code == 200 else answer.body
        want = step["response"]
        if compare.get("code", True) and answer.code != want["code"]:
            result.problems.append(f"code: want {want['code']}, got {answer.code}"
                                   + (f" ({_short(answer.body or answer.raw.decode(errors='replace'), 400)})"))
        if step["role"] == "cleanup":
            return [*extra, result]
        if step["role"] == "wait":
            self._check_wait(step, answer, norm, result)
        elif "watch" in request and answer.code == 200:
            self._check_watch(step, answer, norm, result)
        else:
            self._check_plain(step, answer, norm, result)
        if not compare.get("strict", True) and result.problems and answer.code == want["code"]:
            result.warnings, result.problems = result.problems, []
        return [*extra, result]

    def _normalised(self, body: Any, compare: dict[str, Any], norm: normalize.Norm,
                    request: dict[str, Any]) -> Any:
        gen = ((request.get("body") or {}).get("metadata") or {}).get("generateName") \
            if isinstance(request.get("body"), dict) else None
        if gen:
            norm.gen_prefixes.add(gen[:58])
        shaped = normalize.shape(body, only=compare.get("body_paths"),
                                 full_managed_fields=compare.get("managed_fields") == "full")
        norm.learn(shaped)
        return shaped

    def _check_plain(self, step: dict[str, Any], answer: Answer, norm: normalize.Norm, result: StepResult) -> None:
        want, compare, request = step["response"], step.get("compare", {}), step["request"]
        if "body_text" in want:
            got_text = answer.raw.decode(errors="replace")
            if got_text != want["body_text"]:
                result.problems.append(f"body: want {want['body_text']!r}, got {got_text[:300]!r}")
            return
        if "body_base64" in want:
            got64 = base64.b64encode(answer.raw).decode()
            if got64 != want["body_base64"]:
                result.problems.append(f"body (binary): want {want['body_base64'][:80]}..., got {got64[:80]}...")
            return
        shaped = self._normalised(answer.body, compare, norm, request)
        warnings = list(answer.warnings)
        norm.learn(warnings)
        got = norm.value(shaped)
        got_warnings = [norm.text(w, long_ok=True) for w in warnings]
        if compare.get("warnings") and got_warnings != want.get("warnings", []):
            result.problems.append(f"warnings: want {want.get('warnings', [])}, got {got_warnings}")
        wbody = want.get("body")
        if _is_failure(wbody):
            result.problems += compare_status(wbody, got, compare)
        elif wbody is not None:
            result.problems += compare_body(wbody, got, compare)

    # ---- watches
    def _watch(self, case: str, step: dict[str, Any], norm: normalize.Norm, answers: dict[str, Any],
               extra: list[StepResult]) -> Answer:
        request = step["request"]
        spec = request["watch"]
        deadline = time.monotonic() + spec["deadline_s"]
        conn, resp = self.http.open(request, answers, timeout=spec["deadline_s"] + 5)
        try:
            if resp.status != 200:
                return _answer(resp, resp.read())
            for during in step.get("during") or []:
                extra.extend(self._run_step(case, during, norm, answers))
            answer = Answer(code=200, content_type=resp.getheader("Content-Type", "") or "")
            until, nth, seen = spec.get("until"), (spec.get("until") or {}).get("nth", 1), 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    answer.ended_by = "deadline"
                    break
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                try:
                    line = resp.readline()
                except TimeoutError:
                    answer.ended_by = "deadline"
                    break
                except (http.client.IncompleteRead, ConnectionError):
                    answer.ended_by = "closed"
                    break
                if not line:
                    answer.ended_by = "closed"
                    break
                if not line.strip():
                    continue
                text = line.decode()
                event = json.loads(text)
                answer.events.append(event)
                if event.get("type") in ("ERROR", "BOOKMARK"):
                    answer.raw_lines.append(text)
                if until and _event_matches(event, until):
                    seen += 1
                    if seen >= nth:
                        answer.ended_by, answer.until_met = "until", True
                        break
                if len(answer.events) >= spec["max_events"]:
                    answer.ended_by = "max_events"
                    break
            return answer
        finally:
            conn.close()

    def _check_watch(self, step: dict[str, Any], answer: Answer, norm: normalize.Norm, result: StepResult) -> None:
        want = step["response"]
        got_events = []
        for event in answer.events:
            shaped = {"type": event.get("type"), "object": normalize.shape(event.get("object"))}
            norm.learn(shaped)
            got_events.append(norm.value(shaped))
        got_events = normalize.collapse_bookmarks(got_events)
        want_events = want.get("events", [])
        wtypes, gtypes = [e["type"] for e in want_events], [e["type"] for e in got_events]
        if wtypes != gtypes:
            result.problems.append(f"event types: want {wtypes}, got {gtypes}")
        else:
            for i, (w, g) in enumerate(zip(want_events, got_events, strict=True)):
                diffs = compare_body(w["object"], g["object"], {"body": "normalized"}) \
                    if not _is_failure(w["object"]) else compare_status(
                        w["object"], g["object"], {"reason": True, "message": "exact"})
                result.problems += [f"event {i} ({w['type']}): {d}" for d in diffs]
        if (want.get("ended_by") == "closed") != (answer.ended_by == "closed"):
            result.problems.append(f"ended_by: want {want.get('ended_by')}, got {answer.ended_by}")
        if "raw_lines" in want:
            got_lines = [json.loads(normalize.raw_line(norm, line)) for line in answer.raw_lines]
            # the same collapse as the events: one or two bookmarks near a deadline are one
            collapsed: list[Any] = []
            for line in got_lines:
                if not (collapsed and collapsed[-1] == line and line.get("type") == "BOOKMARK"):
                    collapsed.append(line)
            want_lines = [json.loads(x) for x in want["raw_lines"]]
            if collapsed != want_lines:
                result.problems.append(f"raw lines: want {want_lines}, got {collapsed}")

    # ---- waits
    def _wait(self, request: dict[str, Any], answers: dict[str, Any]) -> Answer:
        if "repeat_until" in request:
            spec = request["repeat_until"]
            deadline = time.monotonic() + spec["deadline_s"]
            while True:
                answer = self.http.send(request, answers)
                if answer.code == spec["code"] or time.monotonic() > deadline:
                    answer.until_met = answer.code == spec["code"]
                    return answer
                time.sleep(0.2)  # the recorder's own pace for a repeated GET: not a synchronisation
        spec = request["watch"]
        conn, resp = self.http.open(request, answers, timeout=spec["deadline_s"] + 5)
        deadline = time.monotonic() + spec["deadline_s"]
        try:
            if resp.status != 200:
                return _answer(resp, resp.read())
            answer = Answer(code=200)
            while time.monotonic() < deadline:
                if conn.sock is not None:
                    conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    line = resp.readline()
                except TimeoutError:
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                answer.events.append(event)
                if _event_matches(event, spec["until"]):
                    answer.until_met, answer.body = True, event.get("object")
                    break
            return answer
        finally:
            conn.close()

    def _check_wait(self, step: dict[str, Any], answer: Answer, norm: normalize.Norm, result: StepResult) -> None:
        want, compare = step["response"], step.get("compare", {})
        if not answer.until_met:
            result.problems.append("the condition was not met within the deadline")
            return
        if "object" not in want:
            return
        paths = (compare.get("object") or {}).get("paths") if isinstance(compare.get("object"), dict) else None
        shaped = normalize.shape(answer.body, only=paths)
        norm.learn(shaped)
        result.problems += _diff(want["object"], norm.value(shaped))


def replay(cases: list[dict[str, Any]], url: str) -> list[StepResult]:
    """Every step's result, the cases run in order against the server at `url`."""
    replayer = Replayer(url)
    out: list[StepResult] = []
    for case in cases:
        out.extend(replayer.run_case(case))
    return out


def summary(results: list[StepResult], exceptions: dict[str, str]) -> str:
    """`matched X/Y` over the check steps, then steps and cases."""
    checks = [r for r in results if r.role == "check"]
    cases: dict[str, bool] = {}
    for r in results:
        cases[r.case] = cases.get(r.case, True) and r.matched
    excused = sorted(r.key for r in results if not r.matched and r.key in exceptions)
    return (f"fidelity: matched {sum(r.matched for r in checks)}/{len(checks)} checks, "
            f"{sum(r.matched for r in results)}/{len(results)} steps, "
            f"{sum(cases.values())}/{len(cases)} cases; deliberate exceptions: {len(excused)}"
            + "".join(f"\n  {k}: {exceptions[k]}" for k in excused))


def main(argv: list[str] | None = None) -> int:
    from tests.fidelity.exceptions import EXCEPTIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--area", action="append", help="report only these areas (all cases still run)")
    parser.add_argument("--case", action="append", help="report only these cases (all cases still run)")
    parser.add_argument("--upto", help="run the cases in order only up to this one (and the setup before it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every difference and warning")
    args = parser.parse_args(argv)
    cases = load_cases()
    if args.upto:
        names = [c["name"] for c in cases]
        cases = cases[: names.index(args.upto) + 1]
    shown = {c["name"] for c in cases if (not args.area or c["area"] in args.area)
             and (not args.case or c["name"] in args.case)}
    with local_apiserver() as url:
        results = replay(cases, url)
    for r in results:
        if r.case not in shown or (r.matched and not (args.verbose and r.warnings)):
            continue
        mark = "ok  " if r.matched else ("EXC " if r.key in EXCEPTIONS else "FAIL")
        print(f"{mark} {r.key} [{r.role}]")
        for p in r.problems if args.verbose else r.problems[:3]:
            print(f"       {p}")
        for w in r.warnings if args.verbose else []:
            print(f"       (warning) {w}")
    if len(shown) < len({r.case for r in results}):
        chosen = summary([r for r in results if r.case in shown], EXCEPTIONS).split("\n")[0]
        print(chosen.replace("fidelity:", "fidelity (chosen cases):", 1))
    print(summary(results, EXCEPTIONS))
    return 0 if all(r.matched or r.key in EXCEPTIONS for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
