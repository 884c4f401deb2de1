"""A prober for the churn benchmark: DISCOVERs to the slave's dhcpd at a fixed rate, through the
HA lab's relay (giaddr, option 82), with every probe and answer kept for later analysis."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.lab.relay import RETRY_SECS, Client, Relay

#: A client is not asked again while its last DISCOVER may still be in dhcpd's ping-check
#: (unanswered and younger than this): dhcpd drops a DISCOVER for a lease it is already
#: offering ("if we're already acking this lease, don't do it again", dhcp.c ack_lease), and
#: that silence is the prober's own doing, neither an outage nor a change shown.
RESEND_AFTER = 1.5
#: a probe unanswered after this long counts as unanswered. Upstream's dhcpd.conf sets
#: ``ping-check true``: before an OFFER of an address not active for that client dhcpd pings it
#: and waits ping-timeout (1 s; dhcp.c, do_ping_check). A probe never REQUESTs, and in the lab
#: nearly every OFFER to a probe came 1 s after its DISCOVER: with a 1 s timeout about half of
#: them counted as unanswered. A real client waits 4 s before it retransmits (RFC 2131 4.1).
ANSWER_TIMEOUT = 2.5


@dataclass
class Probe:
    """One DISCOVER and what came back (``answered_at`` None: nothing within the timeout)."""

    client: str
    sent_at: float
    control: bool
    answered_at: float | None = None
    filename: str = ""


class Prober(Relay):
    """Sends one DISCOVER every ``1 / rate`` seconds to ``server`` only; ``secs`` is past the
    failover load-balancing limit, so the slave answers whichever peer the client hashes to."""

    def __init__(self, ns: str, server: str, rate: float) -> None:
        super().__init__(ns, [server])
        self.period = 1.0 / rate
        self.probes: dict[int, Probe] = {}
        #: the last probe of each client
        self.last: dict[str, Probe] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def busy(self, name: str, now: float) -> bool:
        """Whether client ``name`` may still be in dhcpd's ping-check (see RESEND_AFTER)."""
        last = self.last.get(name)
        return last is not None and last.answered_at is None and now - last.sent_at < RESEND_AFTER

    def start(self, pick: Callable[[int], tuple[Client, bool] | None]) -> None:
        """Start probing; ``pick(tick)`` names the client of each tick and whether it is a
        control (an unchanged client, which must always be answered), or None: no probe."""
        self._threads = [
            threading.Thread(target=self._send_loop, args=(pick,), daemon=True),
            threading.Thread(target=self._receive_loop, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.close()

    def _send_loop(self, pick: Callable[[int], tuple[Client, bool] | None]) -> None:
        tick = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            picked = pick(tick)
            if picked is not None:
                client, control = picked
                xid = int.from_bytes(os.urandom(4), "big")
                probe = self.probes[xid] = Probe(client.name, time.monotonic(), control)
                self.last[client.name] = probe
                self._send(self._packet(client, xid, "discover", RETRY_SECS), self.servers)
            tick += 1
            next_at += self.period
            # a fixed schedule: a slow tick does not shift the later ones
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            reply = self._receive(0.2)
            if reply is None or reply.kind != "offer":
                continue
            probe = self.probes.get(reply.xid)
            if probe is not None and probe.answered_at is None:
                probe.answered_at, probe.filename = reply.at, reply.filename

    def settled(self, now: float) -> list[Probe]:
        """The probes whose outcome is known by ``now`` (answered, or past the timeout)."""
        return [
            p
            for p in list(self.probes.values())
            if p.answered_at is not None or now - p.sent_at > ANSWER_TIMEOUT
        ]
