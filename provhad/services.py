"""The services edge: restarting dhcpd, reloading named and chronyd, each bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from provhad.config import Config


@dataclass(frozen=True)
class Outcome:
    """How a command ended."""

    ok: bool
    returncode: int | None
    output: str
    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            return "timed out (killed with its process group)"
        text = " ".join(self.output.split())[-300:]
        return f"exit {self.returncode}" + (f": {text}" if text else "")


_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


def child_env() -> dict[str, str]:
    """Our environment without systemd's per-service variables: a child (dhcpd, systemctl)
    must not speak to our notify socket or think the watchdog is its own."""
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


async def run(argv: Sequence[str], timeout: float) -> Outcome:
    """Run a command in its own process group; on timeout kill the whole group.

    A restart command that hangs (a stuck ``systemctl`` waiting on a job) must not hang the
    daemon, and whatever it spawned must go with it.
    """
    if not argv:
        return Outcome(True, 0, "")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=child_env(),
        )
    except OSError as exc:
        return Outcome(False, None, f"{argv[0]}: {exc.strerror or exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return Outcome(False, None, "", timed_out=True)
    text = out.decode("utf-8", "replace")
    return Outcome(proc.returncode == 0, proc.returncode, text)


async def restart_dhcpd(cfg: Config, timeout: float | None = None) -> Outcome:
    """Restart dhcpd, then check that it is (still) active a few times: dhcpd may exit a moment
    after systemd reported the start when it dislikes its configuration or cannot bind.
    ``timeout`` overrides ``dhcpd.restart_timeout`` for the restart command."""
    d = cfg.dhcpd
    outcome = await run(d.restart_command, d.restart_timeout if timeout is None else timeout)
    if not outcome.ok:
        return outcome
    check = Outcome(True, 0, "")
    for attempt in range(max(1, d.check_attempts)):
        if attempt:
            await asyncio.sleep(d.check_interval)  # the thing checked is outside our process
        check = await run(d.check_command, d.check_timeout)
        if not check.ok:
            return Outcome(
                False,
                check.returncode,
                "dhcpd is not active after the restart: " + check.describe(),
                check.timed_out,
            )
    return check


async def reload(cfg: Config, service: str) -> Outcome:
    """Let named or chronyd pick up their changed file."""
    command = {
        "named": cfg.services.named_reload_command,
        "chrony": cfg.services.chrony_reload_command,
        # Kea reads its included files only at start: a restart, and only if it runs
        "kea6": cfg.services.kea_restart_command,
    }.get(service, ())
    return await run(command, cfg.services.timeout)


# --- asking systemd about units (provhad check, provhad status) ----------------------------------

_SHOW = ("LoadState", "ActiveState", "SubState", "ActiveEnterTimestampMonotonic")
_RUNNING = frozenset({"active", "reloading"})


class SystemdError(Exception):
    """systemd could not be asked (no systemctl, no systemd as PID 1, a timeout)."""


@dataclass(frozen=True)
class UnitState:
    """What systemd says about one unit."""

    unit: str
    load: str
    active: str
    sub: str
    #: seconds since the unit last entered "active"; None when it never did (this boot)
    active_for: float | None

    @property
    def running(self) -> bool:
        return self.active in _RUNNING

    def describe(self) -> str:
        """``dhcpd.service failed (failed)``, ``x.service not found``, ``y.service active``."""
        if self.load not in ("loaded", ""):
            return f"{self.unit} {self.load}"  # not-found, masked, bad-setting, error
        sub = f" ({self.sub})" if self.sub and self.sub != self.active else ""
        return f"{self.unit} {self.active}{sub}"


def unit_of(command: Sequence[str]) -> str | None:
    """The unit a ``systemctl VERB [OPTIONS] UNIT`` command acts on; None for anything else."""
    if len(command) < 3 or os.path.basename(command[0]) != "systemctl":
        return None
    unit = command[-1]
    return None if unit.startswith("-") else unit


def parse_show(units: Sequence[str], text: str, now_usec: int) -> list[UnitState]:
    """``systemctl show --property=...`` output for ``units`` (blocks in the same order,
    separated by empty lines); ``now_usec`` is CLOCK_MONOTONIC when it was taken."""
    blocks = text.strip("\n").split("\n\n") if text.strip() else []
    if len(blocks) != len(units):
        raise SystemdError(f"systemctl show answered {len(blocks)} blocks for {len(units)} units")
    out = []
    for unit, block in zip(units, blocks, strict=True):
        props = dict(line.partition("=")[::2] for line in block.splitlines())
        try:
            entered = int(props.get("ActiveEnterTimestampMonotonic") or 0)
        except ValueError:
            entered = 0
        out.append(
            UnitState(
                unit,
                props.get("LoadState", ""),
                props.get("ActiveState", ""),
                props.get("SubState", ""),
                max(0.0, (now_usec - entered) / 1e6) if entered else None,
            )
        )
    return out


async def unit_states(units: Sequence[str], timeout: float) -> list[UnitState]:
    """What systemd says about ``units``: one ``systemctl show`` (unprivileged, read-only),
    killed after ``timeout`` seconds. Raises SystemdError when systemd cannot be asked."""
    if not units:
        return []
    outcome = await run(
        ["systemctl", "show", "--property=" + ",".join(_SHOW), "--", *units], timeout
    )
    now_usec = time.monotonic_ns() // 1000
    if not outcome.ok:
        raise SystemdError(f"systemctl show: {outcome.describe()}")
    return parse_show(units, outcome.output, now_usec)
