"""The child harness: runs the user's code in its own process and tells the supervisor what happened.

Everything here runs in the same process as the user's code, so nothing it sends is trusted beyond
what that code could have produced honestly: the supervisor validates every claim and decides
signals, timeouts and memory kills itself.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import faulthandler
import os
import sys
import types

from execution_operator.runner import jsonc, warm
from execution_operator.runner import report as r

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FILENAME = "<execution>"
REPORT_FD_ENV = r.REPORT_FD_ENV

_NETWORK_TIMEOUT_NAMES = frozenset({"Timeout", "ConnectTimeout", "ReadTimeout", "TimeoutException"})
_NETWORK_ERROR_NAMES = frozenset({"ConnectionError", "ConnectError", "NetworkError", "ProtocolError"})


def error_type_of(exc: BaseException) -> str:
    """Map an uncaught exception to its error type; subclasses are tested before their bases."""
    if isinstance(exc, SyntaxError):  # includes IndentationError and TabError
        return r.SYNTAX_ERROR
    if isinstance(exc, ImportError):  # includes ModuleNotFoundError
        return r.IMPORT_ERROR
    if isinstance(exc, RecursionError):
        return r.RECURSION_ERROR
    if isinstance(exc, MemoryError):
        return r.OOM
    if isinstance(exc, ZeroDivisionError):
        return r.DIVISION_ERROR
    decoder = sys.modules.get("json.decoder")  # a JSONDecodeError exists only once json.decoder is imported
    if decoder is not None and isinstance(exc, decoder.JSONDecodeError):  # a ValueError subclass
        return r.JSON_ERROR
    if isinstance(exc, UnicodeError):  # a ValueError subclass
        return r.ENCODING_ERROR
    if isinstance(exc, KeyError):
        return r.KEY_ERROR
    if isinstance(exc, IndexError):
        return r.INDEX_ERROR
    if isinstance(exc, OSError):
        return _os_error_type(exc)
    if isinstance(exc, TypeError):
        return r.TYPE_ERROR
    if isinstance(exc, ValueError):
        return r.VALUE_ERROR
    if isinstance(exc, AttributeError):
        return r.ATTRIBUTE_ERROR
    if isinstance(exc, NameError):  # includes UnboundLocalError
        return r.NAME_ERROR
    return _network_by_name(exc) or r.RUNTIME_ERROR


def _os_error_type(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return r.FILE_NOT_FOUND
    if isinstance(exc, PermissionError):
        return r.PERMISSION
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias
        return r.NETWORK_TIMEOUT
    socket = sys.modules.get("socket")  # the code raised a socket error only if it imported socket
    if isinstance(exc, ConnectionError) or (socket is not None and isinstance(exc, socket.gaierror)):
        return r.NETWORK_ERROR
    # urllib's URLError wraps the real cause in `reason`.
    reason = getattr(exc, "reason", None)
    if isinstance(reason, OSError) and reason is not exc:
        inner = _os_error_type(reason)
        if inner != r.OS_ERROR:
            return inner
    return _network_by_name(exc) or r.OS_ERROR


def _network_by_name(exc: BaseException) -> str | None:
    """Third-party HTTP clients (requests, httpx, urllib3) name their errors consistently."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _NETWORK_TIMEOUT_NAMES:
        return r.NETWORK_TIMEOUT
    if names & _NETWORK_ERROR_NAMES:
        return r.NETWORK_ERROR
    return None


def _safe(call: Any, default: str) -> str:
    try:
        return str(call())
    except BaseException:  # noqa: BLE001 - a user-defined __str__ may raise anything
        return default


def describe(exc: BaseException) -> tuple[str, str, int | None]:
    """(one-line message, traceback tail without the harness's frames, line in the user's code)."""
    import traceback  # only on failure: keeps the start fast

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
        tb = tb.tb_next
    lineno: int | None = None
    walk = tb
    while walk is not None:
        if walk.tb_frame.f_code.co_filename == FILENAME:
            lineno = walk.tb_lineno
        walk = walk.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == FILENAME:
        lineno = exc.lineno
    name = type(exc).__name__
    details = _safe(lambda: "".join(traceback.format_exception(type(exc), exc, tb)), name)
    only = _safe(lambda: "".join(traceback.format_exception_only(type(exc), exc)), name)
    lines = [line for line in only.splitlines() if line.strip()]
    message = lines[-1] if lines else name
    if len(details) > r.DETAILS_LIMIT:
        details = "...\n" + details[-r.DETAILS_LIMIT :]
    return r.one_line(message), details, lineno


def _failure(error_type: str, exc: BaseException, exit_code: int = 1) -> dict[str, Any]:
    message, details, lineno = describe(exc)
    return {
        "kind": "result",
        "success": False,
        "exitCode": exit_code,
        "errorType": error_type,
        "exceptionType": type(exc).__name__[: r.EXCEPTION_TYPE_LIMIT],
        "message": message,
        "details": details,
        "lineno": lineno,
        "output": None,
    }


def _output_failure(error_type: str, message: str) -> dict[str, Any]:
    return {"kind": "result", "success": False, "exitCode": 0, "errorType": error_type,
            "exceptionType": None, "message": r.one_line(message), "details": None, "lineno": None,
            "output": None}


def take_output(env: dict[str, Any], output_dir: str, limit: int) -> dict[str, Any]:
    """The output: global `result`, else `result.json` in the output dir, else null.

    A `result` of None counts as unset, so code that initialises `result = None` and then writes
    result.json still has its file taken.
    """
    value = env.get("result")
    try:
        if value is not None:
            text = jsonc.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        else:
            path = os.path.join(output_dir, "result.json")
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = -1
            if size > limit * 8:  # clearly too large even after re-encoding: do not read it
                return _output_failure(
                    r.OUTPUT_TOO_LARGE, f"result.json is {size} bytes, over the limit of {limit} bytes"
                )
            if size < 0:
                text = "null"
            else:
                with open(path, encoding="utf-8") as fh:
                    parsed = jsonc.loads(fh.read())
                text = jsonc.dumps(parsed, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except Exception as exc:  # noqa: BLE001 - json errors, or anything a user-defined type raises while encoded
        what = "`result`" if value is not None else "result.json"
        reason = _safe(exc.__str__, type(exc).__name__)
        return _output_failure(r.OUTPUT_ERROR, f"The output in {what} is not valid JSON: {reason}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        return _output_failure(
            r.OUTPUT_TOO_LARGE, f"The output is {size} bytes of JSON, over the limit of {limit} bytes"
        )
    return {"kind": "result", "success": True, "exitCode": 0, "errorType": None, "exceptionType": None,
            "message": "", "details": None, "lineno": None, "output": text}


def _read_payload(directory: str, name: str) -> str | None:
    plain = os.path.join(directory, name)
    if os.path.exists(plain):
        with open(plain, "rb") as fh:
            return fh.read().decode("utf-8")
    packed = plain + ".gz"
    if os.path.exists(packed):
        import gzip

        with gzip.open(packed, "rb") as fh:
            return fh.read().decode("utf-8")
    return None


class _RegisterSourceOnImport:
    """A meta-path finder that hands `linecache` the code's lines the moment anything imports it.

    Tracebacks and warnings take the code's lines from `linecache.cache` (its `<execution>` name is not a
    file). Importing linecache up front would cost every execution ~8 ms of CPU (it pulls in `tokenize`
    and `re`), so the entry is added when the module loads: by our traceback on failure, or by the code.
    """

    def __init__(self, entry: tuple[int, None, list[str], str]) -> None:
        self.entry = entry

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "linecache":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module
        entry = self.entry

        def exec_module(module: types.ModuleType) -> None:
            load(module)
            module.cache[FILENAME] = entry

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register_source(code: str) -> None:
    """Make the code's lines known to `linecache` (now if it is loaded, else when it is imported)."""
    entry = (len(code), None, code.splitlines(True), FILENAME)
    loaded = sys.modules.get("linecache")
    if loaded is not None:
        loaded.cache[FILENAME] = entry
    else:
        sys.meta_path.insert(0, _RegisterSourceOnImport(entry))


def run_code(code: str, input_data: Any, output_dir: str, limit: int) -> dict[str, Any]:
    """Run the user's code as `__main__` and turn how it ended into a result frame."""
    module = types.ModuleType("__main__")
    env = module.__dict__
    env["__builtins__"] = builtins
    env["input_data"] = input_data
    sys.modules["__main__"] = module
    sys.argv = [FILENAME]
    register_source(code)
    try:
        exec(compile(code, FILENAME, "exec"), env)
    except SystemExit as exc:
        status = exc.code
        if status is None or status == 0:
            return take_output(env, output_dir, limit)
        if isinstance(status, int):
            exit_code = status & 0xFF or 1
            frame = _failure(r.RUNTIME_ERROR, exc, exit_code)
            frame["message"] = f"The code called sys.exit({status})"
        else:
            exit_code = 1
            frame = _failure(r.RUNTIME_ERROR, exc, exit_code)
            text = _safe(status.__str__, "")
            frame["message"] = r.one_line(f"The code called sys.exit with a message: {text}")
        frame["details"] = None
        return frame
    except BaseException as exc:  # noqa: BLE001 - whatever the user's code raised is its outcome
        return _failure(error_type_of(exc), exc)
    return take_output(env, output_dir, limit)


def _flush_user_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def main() -> None:
    """Entry point of the child process (`python -m execution_operator.runner.child`)."""
    faulthandler.enable()  # a native crash still prints the Python frames to stderr
    # Bind what the report needs before the user's code can replace module attributes.
    send_exit = os._exit
    write_fd = os.write
    dumps = jsonc.dumps
    fd = int(os.environ.pop(REPORT_FD_ENV))
    os.set_inheritable(fd, False)  # programs the code runs do not get the channel

    def send(data: bytes) -> None:
        if write_fd(fd, data) != len(data):  # a SOCK_SEQPACKET write is one whole record or an error
            raise OSError(errno.EMSGSIZE, "short write")

    def report(frame: dict[str, Any]) -> None:
        # A frame is one datagram: a JSON header line, then the output's JSON text as it is.
        body = frame.pop("output", None)
        head = dumps(frame, ensure_ascii=False).encode("utf-8", "surrogatepass")
        data = head if body is None else head + b"\n" + body.encode("utf-8", "surrogatepass")
        try:
            send(data)
        except OSError as exc:
            if body is None or exc.errno != errno.EMSGSIZE:
                return  # the code closed or broke the channel: the supervisor uses the exit status
            too_large = _output_failure(
                r.OUTPUT_TOO_LARGE, f"The output is {len(body)} characters of JSON, too large to report"
            )
            too_large.pop("output")
            with contextlib.suppress(OSError):
                send(dumps(too_large).encode())

    payload_dir = os.environ.get("SANDBOX_PAYLOAD_DIR", "/sandbox/payload")
    input_dir = os.environ.get("SANDBOX_INPUT_DIR", "/input")
    output_dir = os.environ.get("SANDBOX_OUTPUT_DIR", "/output")
    limit = int(os.environ.get("SANDBOX_OUTPUT_LIMIT_BYTES", "131072"))
    try:
        if warm.enabled():
            # A warm pool's pod: pay for the class's imports now, then wait for the one payload.
            warm.import_warm_modules(os.environ.get(warm.WARM_IMPORTS_ENV, ""))
            code, input_text = warm.receive_in_harness()
        else:
            read = _read_payload(payload_dir, "code.py")
            if read is None:
                raise FileNotFoundError(f"no code.py in {payload_dir}")
            code = read
            input_text = _read_payload(payload_dir, "input.json")
        input_data = jsonc.loads(input_text) if input_text is not None and input_text.strip() else None
        try:
            with open(os.path.join(input_dir, "data.json"), "w", encoding="utf-8") as fh:
                fh.write(jsonc.dumps(input_data, ensure_ascii=False))
        except OSError:
            pass  # the file is a convenience; `input_data` is the primary way in
    except Exception as exc:  # noqa: BLE001 - reported as a setup failure, never as the code's
        report({"kind": "setup_error", "message": r.one_line(f"{type(exc).__name__}: {exc}")})
        send_exit(1)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # relayed live
    report({"kind": "started"})
    frame = run_code(code, input_data, output_dir, limit)
    _flush_user_streams()
    if not frame["success"] and frame.get("details") and frame["exceptionType"] not in (None, "SystemExit"):
        with contextlib.suppress(OSError):
            write_fd(2, frame["details"].encode("utf-8", "replace"))
    report(frame)
    send_exit(frame["exitCode"])


if __name__ == "__main__":
    main()
