"""One rebuild cycle: snapshot -> model -> render -> plan -> stage -> validate -> swap.

``provhad render`` runs it once; the daemon runs it in a loop. Rows the real dhcpd rejects are
traced back to their pool or row, left out and reported, and the set is tried again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from provhad import db, generations, hosts, model, model6, validate
from provhad.config import Config, ValidateConfig
from provhad.facts import ConfigfileCheck, ConfStamp, find_omapi_key, network_access_hosts
from provhad.model import Model, Pool, Reject
from provhad.plan import (
    LIVE,
    ShrinkHold,
    ShrinkLimits,
    judge_shrink,
    live_counts,
    live_hashes,
    make_plan,
    stale_files,
    take_confirmation,
)
from provhad.render import (
    DHCPD,
    INCLUDERS,
    HostFacts,
    RenderedSet,
    Renderer,
    SliceCache,
    blame,
    optional_suspects,
)
from provhad.snapshot import Snapshot
from provhad.validate import Validation

#: How often a set is re-rendered after dhcpd rejected a row (each retry drops >= 1 culprit).
MAX_ATTEMPTS = 25
#: The host files' rendered slices, kept across the cycles of this process. Keyed by content
#: (see render.SliceCache), so whoever shares it gets the same bytes as a whole render.
SLICES = SliceCache()
#: The modelled chunks of the big tables, kept the same way (see model.PartCache).
PARTS = model.PartCache()
#: The TFTP listings and what each chunk of modems lacks there (see facts.ConfigfileCheck).
CONFIGFILES = ConfigfileCheck()


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Hold the cyclic garbage collector off for one rebuild.

    A rebuild makes a tuple or two per row and frees them all at the end; the collector,
    triggered every few hundred allocations, walks the ever-growing young heap again and
    again for cycles there are none of (a third of the model's time at 500k modems).
    Reference counting still frees everything; the collector runs again afterwards.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class Result:
    """What one cycle did, for the summary, the state file and the logs."""

    ok: bool = False
    node: str = ""
    model: Model | None = None
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    services: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    rejected_by_dhcpd: list[Reject] = field(default_factory=list)
    missing_configfiles: list[str] = field(default_factory=list)  # the first few
    missing_count: int = 0
    validated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    generation: int | None = None
    error: str = ""
    #: identifies the rendered set (all paths and contents)
    set_hash: str = ""
    #: the set equals one already rejected: nothing was validated or written
    held: bool = False
    #: the shrink guard held the set back (waiting for `provhad confirm-shrink`)
    shrink_held: bool = False
    #: only the changed hosts were given to dhcpd -t (the whole set is not proven yet)
    hosts_only: bool = False
    #: seconds per step of the cycle, in order (the journal's ``phases_ms``)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)

    @property
    def unproven(self) -> bool:
        """No ``dhcpd -t`` has read this set whole (only its changed hosts, or its host table in
        pieces): one must before dhcpd is restarted with it."""
        return self.hosts_only or validate.IN_PIECES in self.validated


class Laps:
    """Adds the seconds since the last lap to a named step (a step run twice adds up)."""

    def __init__(
        self, into: dict[str, float], clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.into, self.clock = into, clock
        self.at = clock()

    def __call__(self, step: str) -> None:
        now = self.clock()
        self.into[step] = self.into.get(step, 0.0) + now - self.at
        self.at = now


def gather_facts(
    cfg: Config,
    snap: Snapshot | None = None,
    tftp_cache: dict[str, tuple[ConfStamp, bool]] | None = None,
) -> HostFacts:
    """What the set depends on besides the database: time, FQDN, OMAPI key, TFTP configs.

    With ``snap``, the TFTP configs (one file per modem) are read only when its provbase row
    sets ``multiple_provisioning_systems``, the one case ignore-cpe.conf lists them; with
    ``tftp_cache`` only those that changed (see :func:`provhad.facts.network_access_hosts`).
    """
    needed = snap is None or any(r.get("multiple_provisioning_systems") for r in snap.provbase)
    return HostFacts(
        now=dt.datetime.now(dt.UTC),
        fqdn=cfg.fqdn(),
        omapi=find_omapi_key(cfg),
        network_access=network_access_hosts(cfg, tftp_cache) if needed else frozenset(),
    )


def optional_is_guilty(
    cfg: Config, renderer: Renderer, m: Model, facts: HostFacts, pool: Pool
) -> bool:
    """Whether dhcpd rejects ``pool`` on its own: a set with just that pool and no hosts,
    rendered with the same templates into a scratch root."""
    gw = next(g for g in m.netgws if g.id == pool.netgw_id)
    alone = dataclasses.replace(
        m,
        netgws=(dataclasses.replace(gw, pools=(pool,)),),
        modems=(),
        public_modems=(),
        blocked_modems=(),
        mtas=(),
        endpoints=(),
    )
    with tempfile.TemporaryDirectory(prefix="provhad-probe-") as tmp:
        probe = Renderer(cfg.with_root(tmp), renderer.template_dirs)
        return not validate.probe_dhcpd(probe.render(alone, facts), cfg.validate)


def culprit(
    cfg: Config,
    renderer: Renderer,
    m: Model,
    rendered: RenderedSet,
    facts: HostFacts,
    path: str,
    line: int,
) -> Reject | None:
    """The pool, pool optional or row to leave out for a dhcpd complaint at ``path:line``."""
    for pool in optional_suspects(m, rendered, path, line):
        if optional_is_guilty(cfg, renderer, m, facts, pool):
            return Reject("ippool", pool.id, "optional")
    return blame(m, rendered, path, line)


#: what Validation.checked says when only the changed hosts were given to dhcpd -t
HOSTS_ONLY = "dhcpd -t (the changed hosts)"


def hosts_only_check(staged: generations.Staged, vcfg: ValidateConfig) -> Validation | None:
    """When dhcpd's part of the plan is confined to the host and subclass files: the changed
    hosts proven on their own (``validate.check_hosts``: O(change), where ``dhcpd -t`` over
    500k hosts takes half a minute), the changed subclass lines parsed as exactly what the
    templates write (a member carries no statements; its class is in global.conf, which did
    not change), and the other services as usual. None when the full check is needed:
    something else of dhcpd's changed, a host or member line that is not one line as the
    templates write it, or a changed host dhcpd refuses (the full check then names the row to
    leave out). The whole set is proven by dhcpd before it is restarted with it
    (``daemon.DhcpdPorts.restart``)."""
    plan, rendered = staged.plan, staged.rendered
    mine = [f for f in plan.write if f.service == DHCPD]
    if plan.remove or not mine:
        return None
    if any(os.path.dirname(f.path) != rendered.dhcp_dir for f in mine):
        return None
    before: dict[str, bytes] = {}
    after: dict[str, bytes] = {}
    for f in mine:
        name = os.path.basename(f.path)
        if name not in hosts.LIVE_FILES:
            return None
        try:  # whole: hosts.changed_entries splits only where they differ (memcmp elsewhere)
            before[name], after[name] = Path(f.path).read_bytes(), f.data
        except OSError:
            return None
    try:
        diffs = hosts.line_differences(before, after)  # one pass over each file, for both
        _gone, came = hosts.changed_entries(before, after, diffs)
        # each changed member line as the templates write it, of a class global.conf declares
        _leave, join = hosts.changed_members(before, after, diffs)
    except (hosts.HostSyntaxError, UnicodeDecodeError):
        return None
    declared = rendered.files.get(os.path.join(rendered.dhcp_dir, "global.conf"))
    text = declared.data if declared is not None else b""
    if any(f'class "{m.cls}"'.encode() not in text for m in join):
        return None
    if validate.check_hosts(list(came.values()), vcfg, validate.host_definitions(rendered)):
        return None
    others = validate.run(staged, vcfg, plan.services() - {DHCPD})
    return Validation(others.problems, [HOSTS_ONLY, *others.checked])


def set_counts(m: Model) -> dict[str, int]:
    return {"hosts": len(m.modems) + len(m.mtas) + len(m.endpoints), "pools": len(m.pools)}


def set_hash(rendered: RenderedSet) -> str:
    digest = hashlib.sha256()
    for path in sorted(rendered.files):
        digest.update(f"{path}\0{rendered.files[path].digest}\0".encode())
    return digest.hexdigest()


def apply(
    cfg: Config,
    snap: Snapshot,
    facts: HostFacts,
    progress: Callable[[], None] | None = None,
    held: str = "",
    *,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    slices: SliceCache | None = SLICES,
    parts: model.PartCache | None = PARTS,
    pieces: validate.Pieces = validate.PIECES,
    configfiles: ConfigfileCheck = CONFIGFILES,
) -> Result:
    """Make the set rendered from ``snap`` live, unless the real daemons reject it.

    ``progress`` is called after each step (the daemon's watchdog is fed by it); a set whose
    hash equals ``held`` (one rejected before) is not validated or written again. A set the
    shrink guard holds is recorded in ``shrink-held.json`` and goes live once a confirmation
    of that very set (not expired at ``now()``) is there. ``slices`` and ``parts``: where the
    host files' slices and the big tables' modelled chunks are kept from one cycle to the
    next (None: rendered and modelled whole). ``pieces``: when and how dhcpd's part of a
    full validation runs in pieces (see :func:`provhad.validate.check_dhcpd_in_pieces`).
    ``configfiles``: where the missing configfiles are counted and kept between cycles.
    """
    result = Result(node=snap.node)
    lap = Laps(result.phases)

    def tick(step: str) -> None:
        lap(step)
        if progress is not None:
            progress()

    state_dir = cfg.paths.under_root(cfg.paths.state_dir)
    # a publish a crash interrupted is finished or undone before anything reads the live set
    recovered = generations.recover(state_dir)
    if recovered:
        result.warnings.append(f"an interrupted publish was found and {recovered}")
    renderer = Renderer(cfg, slices=slices)
    dropped_optional: dict[int, str] = {}
    dropped_rows: dict[tuple[str, int], str] = {}
    if facts.omapi is None:
        result.warnings.append("no OMAPI key found: failover.conf has no omapi-key/omapi-port")
    if facts.network_access == frozenset() and any(
        r.get("multiple_provisioning_systems") for r in snap.provbase
    ):
        result.warnings.append(
            "multiple_provisioning_systems is set but no cm/*.conf under the TFTP root grants "
            "NetworkAccess 1: ignore-cpe.conf ignores every CPE and MTA"
        )
    # DHCPv6 (Kea) rows: bad ones are reported with the v4 rejects; none is blamed by dhcpd
    m6 = model6.build(snap) if cfg.render.dhcpv6 else None
    for attempt in range(MAX_ATTEMPTS):
        try:
            m = model.build(
                snap,
                cfg.own_state,
                default_network_prefix=cfg.render.default_network_prefix,
                dropped_optional=dropped_optional,
                dropped_rows=dropped_rows,
                parts=parts,
            )
        except model.ModelError as exc:
            result.error = str(exc)
            return result
        if m6 is not None and m6.rejects:
            m = dataclasses.replace(m, rejects=m.rejects + m6.rejects)
        result.model = m
        tick("model")
        rendered = renderer.render(m, facts, v6=m6)
        if slices is not None:
            result.warnings.extend(slices.take_mismatches())
        tick("render")
        if attempt == 0:
            result.set_hash = set_hash(rendered)
            if held and result.set_hash == held:
                result.held = True
                result.error = "the same set as the one held back"
                return result
        generations.clean_leftovers(generations.target_dirs(rendered))
        todo = make_plan(rendered, live_hashes(rendered, LIVE), stale_files(rendered))
        if attempt == 0 and not todo.empty:
            live = live_counts(state_dir, rendered)
            verdict = judge_shrink(live, set_counts(m), ShrinkLimits.of(cfg.safety))
            result.warnings.extend(f"shrink guard: {note}; published" for note in verdict.notes)
            if verdict.hold:
                released, why_not = take_confirmation(state_dir, result.set_hash, now())
                if why_not:
                    result.warnings.append(why_not)
                if not released:
                    ShrinkHold(
                        result.set_hash,
                        verdict.hold,
                        {"live": live, "new": set_counts(m)},
                        now().isoformat(timespec="seconds"),
                    ).store(state_dir)
                    result.error = (
                        f"{verdict.hold}; held back until confirmed with `provhad confirm-shrink`"
                    )
                    result.shrink_held = True
                    return result
                result.warnings.append(f"{verdict.hold}; published as confirmed")
        result.missing_count, result.missing_configfiles = configfiles(cfg, m)
        lap("plan")
        if todo.empty:
            break  # the live set is exactly this one: nothing to validate or write
        staged = generations.stage(todo, rendered)
        generations.write_checks(
            staged, functools.partial(renderer.render, m, facts, only=INCLUDERS)
        )
        tick("stage")
        check = hosts_only_check(staged, cfg.validate) or validate.run(
            staged, cfg.validate, pieces=pieces
        )
        result.hosts_only = check.checked[:1] == [HOSTS_ONLY]
        tick("validate")
        result.validated = check.checked
        result.warnings.extend(n for n in check.notes if n not in result.warnings)
        if check.ok:
            break
        culprits = []
        for problem in check.problems:
            if problem.service != DHCPD or problem.path is None or problem.line is None:
                continue
            who = culprit(cfg, renderer, m, rendered, facts, problem.path, problem.line)
            if who is None or who.id is None:
                continue
            reason = f"rejected by dhcpd: {problem.message}"
            if who.table == "ippool" and who.reason == "optional":
                if who.id not in dropped_optional:
                    dropped_optional[who.id] = f"optional statements {reason}"
                    culprits.append(Reject("ippool", who.id, dropped_optional[who.id]))
            elif (who.table, who.id) not in dropped_rows:
                dropped_rows[(who.table, who.id)] = reason
                culprits.append(Reject(who.table, who.id, reason))
        generations.discard(staged)
        if not culprits:
            result.problems = [str(p) for p in check.problems]
            result.error = "the real daemons rejected the set; nothing was written"
            return result
        result.rejected_by_dhcpd.extend(culprits)
    else:
        generations.discard(staged)
        result.error = f"dhcpd still rejects the set after {MAX_ATTEMPTS} attempts"
        return result

    if todo.empty:
        manifest = generations.Manifest.load(state_dir)
        result.generation = manifest.generation if manifest else None
    else:
        result.generation = generations.swap(staged, state_dir, set_counts(m)).generation
        for f in todo.write:  # the next cycle's plan need not read what was just written
            LIVE.remember(f.path, f.digest)
        lap("swap")
    ShrinkHold.clear(state_dir)  # what is live now is not held back any more
    result.ok = True
    result.written = [f.path for f in todo.write]
    result.removed = list(todo.remove)
    result.unchanged = list(todo.unchanged)
    result.services = todo.services()
    return result


async def render_once(cfg: Config) -> Result:
    """The whole cycle once: read a snapshot, then :func:`apply` it."""
    with quiet_gc():
        try:
            snap = await db.read_snapshot(cfg.database)
        except db.DatabaseError as exc:
            return Result(error=str(exc))
        try:
            return apply(cfg, snap, gather_facts(cfg, snap))
        except generations.PublishError as exc:
            return Result(node=snap.node, error=str(exc))


def summary(result: Result) -> str:
    """A report for a person: files, counts, rejected rows, validation."""
    lines = []
    if result.model is not None:
        c = result.model.counts()
        lines.append(
            f"snapshot from {result.node}: {c['cmts']} CMTS, {c['pools']} pools, "
            f"{c['modems']} modems, {c['mtas']} MTAs, {c['endpoints']} endpoints, "
            f"{c['public']} public, {c['blocked']} blocked"
        )
    if result.ok and not result.changed:
        lines.append(
            f"unchanged: the live set is exactly this one (generation {result.generation}, "
            f"{len(result.unchanged)} files); nothing validated, written or removed"
        )
    elif result.ok:
        lines.append(
            f"validated ({', '.join(dict.fromkeys(result.validated))}): ok; generation "
            f"{result.generation}; {len(result.written)} written, {len(result.removed)} removed, "
            f"{len(result.unchanged)} unchanged"
        )
        for path in result.written:
            lines.append(f"  written  {path}")
        for path in result.removed:
            lines.append(f"  removed  {path}")
    rejects = list(result.model.rejects) if result.model else []
    if result.model is not None:
        lines.append(f"rejected rows: {len(rejects)}")
    lines.extend(f"  {r.table} id {r.id}: {r.reason}" for r in sorted(rejects, key=str))
    if result.model is not None and result.model.skipped:
        lines.append(f"skipped (empty or reserved MAC, as upstream): {len(result.model.skipped)}")
    if result.missing_count:
        n, shown = result.missing_count, result.missing_configfiles
        lines.append(f"configfiles missing under the TFTP root: {n}")
        lines.extend(f"  {p}" for p in shown)
        if n > len(shown):
            lines.append(f"  ... and {n - len(shown)} more")
    lines.extend(f"warning: {w}" for w in result.warnings)
    if not result.ok:
        lines.append(f"FAILED: {result.error}")
        lines.extend(f"  {p}" for p in result.problems)
    return "\n".join(lines)
