"""The supervisor: PID 1 of the sandbox container, the only process whose report the operator trusts.

It runs the harness (child.py) in a child process, relays and tails its streams, enforces the
timeout, decides signals and memory kills from the wait status, kills every leftover descendant,
and only then prints the nonce-marked report line and writes the termination message.

Its parts: the settings (config.py), the streams' relay and tails (stream.py), the process table, the
OOM count and the prctl hardening (processes.py), and the outcome decided from what it observed
(outcome.py). This module is the loop that observes.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import select
import struct
import sys
import time

from execution_operator.runner import jsonc, warm
from execution_operator.runner import report as r
from execution_operator.runner.config import Config
from execution_operator.runner.outcome import Outcome, decide
from execution_operator.runner.processes import descendants, harden, read_oom_kills, set_dumpable
from execution_operator.runner.stream import Stream, write_all

# The C modules behind `signal` and `socket`: their Python wrappers build enums at import, which costs
# each execution's start-up several milliseconds of CPU for names the runner never shows.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any
else:
    import _signal

_UCRED = struct.Struct("iII")
_FRAME_BUFFER = 4 * 1024 * 1024
#: Room for a frame's header (message, bounded traceback) besides the output itself.
_FRAME_HEADROOM = 256 * 1024
#: Frames read per wake-up, so a flood of them cannot starve the timeout and the stream relay.
_FRAMES_PER_WAKE = 32
_STOP_SIGNALS = {_signal.SIGTERM, _signal.SIGINT}
#: The harness must have started the user's code within this many seconds of being spawned.
STARTUP_LIMIT_SECONDS = 60.0
#: How long the kill sweep keeps hunting descendants (fork bombs) before giving up.
SWEEP_LIMIT_SECONDS = 5.0
#: Exit code when the container is asked to stop (SIGTERM): no report, the operator decides.
STOPPED_EXIT = 128 + _signal.SIGTERM


class Supervisor:
    """One run of the harness: launch it, relay its output, enforce the timeout, kill leftovers, report."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pid = 0
        self.status: int | None = None
        self.rusage: Any = None
        self.started_mono: float | None = None
        self.started_wall: float | None = None
        self.ended_mono: float | None = None
        self.setup_error: str | None = None
        self.result_frame: tuple[dict[str, Any], bytes] | None = None
        self.foreign_frames = 0
        self.reaped: set[int] = set()
        self.timed_out = False
        self.startup_expired = False
        self.stopped = False
        self.spawned_mono = time.monotonic()
        #: Empty: fork the harness from this process (no second interpreter start-up, about half the
        #: runner's CPU per execution); tests may name a command to run instead.
        self.child_command = config.child_command
        self.inbox: warm.Inbox | None = None

    # -- launching ---------------------------------------------------------------------------
    def spawn(self) -> tuple[Stream, Stream, _socket.socket]:
        """Start the harness with pipes for stdout and stderr and a socket that carries the sender's credentials."""
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        with contextlib.suppress(OSError):
            theirs.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, _FRAME_BUFFER)
            ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, _FRAME_BUFFER)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if self.config.warm_mode:
            # The harness's stdin is a pipe the payload is forwarded on once the container's stdin ends.
            devnull, inbox_w = os.pipe()
            self.inbox = warm.Inbox(0, inbox_w)
        else:
            devnull = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(theirs.fileno(), True)
        env = dict(os.environ)
        env[r.REPORT_FD_ENV] = str(theirs.fileno())
        if not self.child_command:
            # The harness closes our ends, the payload pipe's write end included (or it never sees EOF).
            mine = (out_r, err_r, ours.fileno()) + ((self.inbox.sink,) if self.inbox and self.inbox.sink else ())
            self.pid = self._fork_harness(devnull, out_w, err_w, mine, env)
            for fd in (out_w, err_w, devnull):
                os.close(fd)
            theirs.close()
            self.spawned_mono = time.monotonic()
            for fd in (out_r, err_r):
                os.set_blocking(fd, False)
            ours.setblocking(False)
            return (Stream(out_r, 1, self.config.tail_bytes, self.config.relay_limit),
                    Stream(err_r, 2, self.config.tail_bytes, self.config.relay_limit), ours)
        try:
            self.pid = os.posix_spawn(
                self.child_command[0],
                list(self.child_command),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=(_signal.SIGPIPE,),
            )
        finally:
            for fd in (out_w, err_w, devnull):
                os.close(fd)
            theirs.close()
        self.spawned_mono = time.monotonic()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        ours.setblocking(False)
        limit, relay = self.config.tail_bytes, self.config.relay_limit
        return Stream(out_r, 1, limit, relay), Stream(err_r, 2, limit, relay), ours

    @staticmethod
    def _fork_harness(stdin: int, stdout: int, stderr: int, ours: tuple[int, ...], env: dict[str, str]) -> int:
        """Fork the harness: in the child, become what a fresh `python -m ...runner.child` would be."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        try:
            os.setsid()
            for fd in ours:
                os.close(fd)
            os.dup2(stdin, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            for fd in (stdin, stdout, stderr):
                if fd > 2:
                    os.close(fd)
            # Undo what the supervisor set for itself: blocked stop signals, non-dumpable.
            _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
            _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
            _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
            set_dumpable(True)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = ["<execution>"]
            from execution_operator.runner import child

            child.main()
        except BaseException:  # noqa: BLE001 - the child exits with the code that says so
            os._exit(r.SUPERVISOR_FAILURE_EXIT)
        os._exit(0)

    def failure_exit(self) -> int:
        """The exit code of our own failure: 3 once the user's process existed (it may be the cause), else 2."""
        # A warm pod's harness exists before any code does: only a received payload can have started it.
        code_possible = self.pid and (self.inbox is None or self.inbox.received)
        return r.SUPERVISOR_FAILURE_AFTER_START_EXIT if code_possible else r.SUPERVISOR_FAILURE_EXIT

    # -- the run loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Run the harness to the end and publish the report; returns the supervisor's own exit code."""
        harden()
        _signal.pthread_sigmask(_signal.SIG_BLOCK, _STOP_SIGNALS)
        oom_before = read_oom_kills(self.config.memory_events)
        supervisor_start = time.time()
        out, err, chan = self.spawn()
        try:
            pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None
        poller = select.poll()
        streams = {out.fd: out, err.fd: err}
        for fd in (out.fd, err.fd, chan.fileno()):
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        inbox = self.inbox
        if inbox is not None:
            poller.register(0, select.POLLIN)
        while self.status is None:
            for fd, _ in poller.poll(self._wait_ms()):
                if fd in streams:
                    if not self._pump(streams[fd]):
                        poller.unregister(fd)
                elif fd == chan.fileno() and self._receive(chan) == "closed":
                    poller.unregister(fd)
                elif inbox is not None:
                    self._on_inbox(inbox, fd, poller)
            self._check_signals()  # before reaping: a sender that just exited is still a (zombie) descendant
            self._reap()
            self._check_deadlines()
            if self.stopped:
                break
        self.ended_mono = time.monotonic()
        if inbox is not None:
            inbox.close()  # never read again: a pod takes one payload in its life
        self.sweep()
        self._drain(streams, chan)
        if pidfd is not None:
            os.close(pidfd)
        if self.stopped:
            return STOPPED_EXIT
        oom_after = read_oom_kills(self.config.memory_events)
        oom_rose = oom_before is not None and oom_after is not None and oom_after > oom_before
        return self.publish(self.decide(oom_rose), out, err, supervisor_start)

    def _on_inbox(self, inbox: warm.Inbox, fd: int, poller: select.poll) -> None:
        """A warm pod's stdin (fd 0) has data or ended, or the harness's payload pipe can take more."""
        if fd == 0 and inbox.read():
            poller.unregister(0)
            self._payload_received(inbox)
            if inbox.sink is not None:
                poller.register(inbox.sink, select.POLLOUT)
        elif fd == inbox.sink and inbox.write():
            poller.unregister(fd)

    def _payload_received(self, inbox: warm.Inbox) -> None:
        """A warm pod's payload is in: its timeout applies, and the start-up limit counts from now."""
        self.config.timeout_seconds = warm.payload_timeout(bytes(inbox.data), self.config.timeout_seconds)
        self.spawned_mono = time.monotonic()
        if inbox.data:
            write_all(1, f"{warm.PAYLOAD_MARKER} {len(inbox.data)}\n".encode())

    def _wait_ms(self) -> int:
        # Bounded so stop signals (blocked, checked between waits) and deadlines are seen promptly.
        wait = 0.1
        now = time.monotonic()
        if self.started_mono is not None and not self.timed_out:
            wait = min(wait, max(0.0, self.started_mono + self.config.timeout_seconds - now))
        return int(wait * 1000) + 1

    def _pump(self, stream: Stream) -> bool:
        try:
            data = os.read(stream.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        stream.feed(data)
        return True

    def _receive(self, chan: _socket.socket) -> str:
        """Read queued frames: `more` (the per-wake bound was hit), `idle`, or `closed` (no sender left)."""
        size = self.config.output_limit + _FRAME_HEADROOM
        for _ in range(_FRAMES_PER_WAKE):
            try:
                data, ancdata, flags, _ = chan.recvmsg(size, _socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return "idle"
            except OSError:
                return "closed"
            if not data:
                return "closed"
            sender = None
            for level, kind, payload in ancdata:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS:
                    sender = _UCRED.unpack(payload[: _UCRED.size])[0]
            if sender != self.pid or flags & _socket.MSG_TRUNC:
                # Only the harness process itself may report, never a process the code spawned.
                self.foreign_frames += 1
                continue
            self._on_frame(data)
        return "more"

    def _on_frame(self, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        try:
            frame = jsonc.loads(head)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("kind")
        if kind == "started" and self.started_mono is None:
            self.started_mono = time.monotonic()
            self.started_wall = time.time()
        elif kind == "setup_error" and self.started_mono is None:
            self.setup_error = r.one_line(str(frame.get("message", "")))
        elif kind == "result" and self.started_mono is not None:
            self.result_frame = (frame, body)  # the last one wins: the harness sends it after the code

    def _reap(self) -> None:
        """Reap every exited child (orphans reparent to us); remember the harness's status."""
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if len(self.reaped) < 100_000:
                self.reaped.add(pid)
            if pid == self.pid:
                self.status, self.rusage = status, rusage

    def _check_signals(self) -> None:
        while True:
            info = _signal.sigtimedwait(_STOP_SIGNALS, 0)
            if info is None:
                return
            # The code may signal us (same user); only a stop from outside the sandbox counts. In a pod
            # the runtime's signal has no sender pid (0): it comes from outside our pid namespace.
            sender = info.si_pid
            inside = sender == self.pid or sender in self.reaped or sender in descendants(os.getpid())
            if sender == 0 or not inside:
                self.stopped = True
                return

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self.started_mono is not None:
            if not self.timed_out and now - self.started_mono >= self.config.timeout_seconds:
                self.timed_out = True
                self._kill_group()
        elif self.inbox is not None and not self.inbox.received:
            return  # a warm pod waits for its payload as long as its pool keeps it
        elif not self.startup_expired and now - self.spawned_mono >= STARTUP_LIMIT_SECONDS:
            self.startup_expired = True
            self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, _signal.SIGKILL)

    def sweep(self) -> None:
        """SIGKILL every remaining descendant, reaping as we go, until none is left."""
        self._kill_group()
        me = os.getpid()
        if me == 1:
            with contextlib.suppress(OSError):
                os.kill(-1, _signal.SIGKILL)  # as PID 1 of the pod: everything but us
        deadline = time.monotonic() + SWEEP_LIMIT_SECONDS
        while True:
            self._reap()
            left = descendants(me)
            if not left or time.monotonic() > deadline:
                break
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, _signal.SIGKILL)
            time.sleep(0.002)  # give the kernel a moment to reparent the killed processes' children
        if self.status is None:  # the harness was stopped from outside before it ended
            with contextlib.suppress(ChildProcessError):
                _, self.status, self.rusage = os.wait4(self.pid, 0)

    def _drain(self, streams: dict[int, Stream], chan: _socket.socket) -> None:
        """Everything is dead: read what is still buffered in the pipes and the channel."""
        for stream in streams.values():
            while self._pump(stream):
                try:
                    if not select.select([stream.fd], [], [], 0.5)[0]:
                        break
                except OSError:
                    break
            os.close(stream.fd)
        while self._receive(chan) == "more":
            pass
        chan.close()

    # -- deciding ------------------------------------------------------------------------------
    def decide(self, oom_rose: bool) -> Outcome:
        """The outcome of what this run observed (see `outcome.decide`)."""
        return decide(
            self.status,
            self.rusage,
            code_started=self.started_mono is not None,
            setup_error=self.setup_error,
            startup_expired=self.startup_expired,
            startup_limit=STARTUP_LIMIT_SECONDS,
            timed_out=self.timed_out,
            timeout_seconds=self.config.timeout_seconds,
            result_frame=self.result_frame,
            output_limit=self.config.output_limit,
            oom_rose=oom_rose,
        )

    # -- reporting -----------------------------------------------------------------------------
    def publish(self, outcome: Outcome, out: Stream, err: Stream, supervisor_start: float) -> int:
        """Print the marker line, then write the termination message; exit 0/1 only if both worked."""
        finished = time.time()
        started_wall = self.started_wall if self.started_wall is not None else supervisor_start
        duration = 0.0
        if self.started_mono is not None and self.ended_mono is not None:
            duration = round(max(0.0, self.ended_mono - self.started_mono), 3)
        stdout, stdout_truncated = out.text()
        stderr, stderr_truncated = err.text()
        nonce = os.urandom(16).hex()  # made only now: the code never existed alongside it
        report = {
            "v": r.REPORT_VERSION,
            "nonce": nonce,
            "success": outcome.success,
            "exitCode": outcome.exit_code,
            "errorType": outcome.error_type,
            "exceptionType": outcome.exception_type,
            "message": r.one_line(outcome.message),
            "userCodeStarted": self.started_mono is not None,
            "startedAt": r.rfc3339(started_wall),
            "finishedAt": r.rfc3339(finished),
            "durationSeconds": duration,
            "stdout": stdout,
            "stderr": stderr,
            "stdoutTruncated": stdout_truncated,
            "stderrTruncated": stderr_truncated,
            "output": outcome.output,
            "details": outcome.details,
            "meta": outcome.meta,
        }
        err.end_line()
        out.end_line()
        lines, count = r.marker_lines(report)
        if not write_all(1, lines):
            return self.failure_exit()
        if self.config.termination_log:
            # The report line is already last in the log, which no other process can write after it:
            # when the code has made the termination message unwritable (chmod, a full disk), the
            # report still stands on the log alone, so this is no failure of ours.
            with contextlib.suppress(OSError), open(self.config.termination_log, "wb") as fh:
                fh.write(r.encode_summary(report, report_lines=count))
        return 0 if outcome.success else 1


def main(config: Config | None = None) -> int:
    """Run one execution; never let the code's behaviour crash us into a trusted-looking exit code."""
    supervisor: Supervisor | None = None
    try:
        supervisor = Supervisor(config or Config.from_env())
        return supervisor.run()
    except BaseException as exc:  # noqa: BLE001 - any failure of ours must not look like a report
        with contextlib.suppress(OSError):
            os.write(2, f"sandbox runner failed: {type(exc).__name__}\n".encode())
        return supervisor.failure_exit() if supervisor is not None else r.SUPERVISOR_FAILURE_EXIT
