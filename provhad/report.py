"""Telling the truth about the daemon: STATUS for systemd, the state file, MQTT.

:class:`Reporter` is the one place that turns :class:`~provhad.state.State` into what the
outside world sees; the scheduler and the supervisor only change the state and call
:meth:`Reporter.report`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from provhad import log
from provhad.notify import Notifier
from provhad.state import State

#: STATUS is one line in ``systemctl status``; each part is summarised to fit, never cut
#: in the middle of a word.
PART_MAX = 70


def summarise(text: str, most: int = PART_MAX) -> str:
    """``text`` on one line, shortened at a word boundary with "..." when too long."""
    text = " ".join(text.split())
    if len(text) <= most:
        return text
    cut = text[: most - 3].rsplit(" ", 1)[0].rstrip(",;:(")
    return cut + "..."


def status_line(s: State) -> str:
    """The one-line STATUS: live set, hosts, rejects, database, MQTT, dhcpd, held sets."""
    gen = f"live gen {s.generation}" if s.generation is not None else "no live set"
    hosts = s.counts.get("modems", 0) + s.counts.get("mtas", 0) + s.counts.get("endpoints", 0)
    db_part = f"db {s.db_node or '-'} ok" if s.db_ok else f"db DOWN ({summarise(s.db_error)})"
    parts = [gen, f"{hosts} hosts", f"{len(s.rejected)} rejected", db_part, f"mqtt {s.mqtt}"]
    if s.last_success_at:
        parts.insert(1, f"ok {s.last_success_at[11:19]}")
    if not s.last_cycle_ok and s.last_error and s.db_ok:
        parts.append(f"last cycle FAILED ({summarise(s.last_error)})")
    if not s.dhcpd_last_restart_ok:
        parts.append(f"dhcpd restart FAILED ({summarise(s.dhcpd_error)})")
    elif s.restart_pending:
        parts.append("dhcpd restart pending")
    if s.omapi.startswith("off"):
        parts.append(f"omapi {s.omapi}")
    elif s.omapi_fell_back:
        parts.append(f"omapi fell back ({summarise(s.omapi_fallback[26:])})")
    if s.hook_ok is False:
        parts.append(f"configfile build FAILED ({summarise(s.hook_error)})")
    if s.held_reason:
        parts.append(f"HELD: {summarise(s.held_reason)}")
    return ", ".join(parts)


class Reporter:
    """Writes the state file, STATUS and the retained MQTT status after each change."""

    def __init__(self, state: State, state_dir: Path, notifier: Notifier, node: str) -> None:
        self.state = state
        self.state_dir = state_dir
        self.notifier = notifier
        self.node = node
        self.mqtt: Any = None  # provhad.mqtt.MqttLink, when configured
        self.save_error = ""

    def mqtt_state(self) -> str:
        if self.mqtt is None:
            return "off"
        return "ok" if self.mqtt.connected else f"down ({summarise(self.mqtt.last_error, 40)})"

    def report(self) -> None:
        s = self.state
        s.mqtt = self.mqtt_state()
        s.status = status_line(s)
        # the state file first: whoever reacts to STATUS may read it
        self.save()
        self.notifier.status(s.status)
        if self.mqtt is not None:
            self.mqtt.publish_status({"state": "online", "node": self.node, **asdict(s)})

    def save(self) -> None:
        """The state file (also alone: before READY, at shutdown). A failure is logged once
        per kind of error (a full /var/lib would otherwise log at every report)."""
        try:
            self.state.save(self.state_dir)
        except OSError as exc:
            error = f"{exc.strerror or exc} ({exc.filename})"
            if error != self.save_error:
                log.get().error("state_file_failed", error=error)
            self.save_error = error
        else:
            self.save_error = ""
