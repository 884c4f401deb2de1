"""provhad's configuration: the TOML file, with NMS Prime's own env files as fallback.

Every key has a documented default (docs/configuration.md). A bad file or key raises
:class:`ConfigError`, whose message names the file, the key and the problem.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

ROLES = ("master", "slave")


class ConfigError(Exception):
    """A configuration problem: ``file: key: problem``."""

    def __init__(self, file: str | os.PathLike[str], key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")


@dataclass(frozen=True)
class DatabaseConfig:
    """Where the NMS Prime database is; ``hosts`` are Galera nodes tried in order."""

    hosts: tuple[str, ...] = ("localhost:3306",)
    user: str = "slaveread"
    password: str = field(default="", repr=False)
    name: str = "nmsprime"
    socket: str = ""
    connect_timeout: float = 5.0

    def endpoints(self) -> list[tuple[str, int]]:
        """``hosts`` as (host, port) pairs; the port defaults to 3306."""
        out = []
        for entry in self.hosts:
            m = _HOST_RE.fullmatch(entry)
            assert m is not None  # checked when loaded
            port = int(m.group(2)[1:]) if m.group(2) else 3306
            out.append((m.group(1).strip("[]"), port))
        return out


@dataclass(frozen=True)
class PathsConfig:
    """Locations of everything provhad reads or writes; all are prefixed with ``root``."""

    root: str = "/"
    dhcp_dir: str = "/etc/dhcp-nmsprime"
    tftp_root: str = "/tftpboot"
    named_key: str = "/etc/named-nmsprime.d/dhcpupdate.key"
    named_ddns_script: str = "/etc/dhcp-nmsprime/named-ddns.sh"
    ddns_cpe_key: str = "/etc/named-ddns-cpe.key"
    chrony_conf: str = "/etc/chrony-nmsprime.d/nmsprime.conf"
    state_dir: str = "/var/lib/provhad"
    template_dir: str = "/etc/provhad/templates"
    nmsprime_env_dir: str = "/etc/nmsprime/env"
    #: Kea's directory: gateways6.conf, gateways6/<id>.conf, hosts6.conf (render.dhcpv6)
    kea_dir: str = "/etc/kea"

    def under_root(self, path: str) -> Path:
        """``path`` (absolute, as seen by the services) inside ``root``."""
        return Path(self.root) / PurePosixPath(path).relative_to("/")


@dataclass(frozen=True)
class RenderConfig:
    """Choices that shape the generated files."""

    timezone: str = "Europe/Berlin"
    fqdn: str = ""
    provvoip: bool = True
    omapi_key_name: str = "my_omapi_key"
    omapi_secret: str = field(default="", repr=False)
    default_network_prefix: int = 22
    #: also render Kea's DHCPv6 files (upstream's nms:dhcp writes them too)
    dhcpv6: bool = False
    #: modems and MTAs declared as ``host <name>-<8 hex>`` (render.host_declaration): dhcpd
    #: reads big host tables about 3x faster; the master's files keep the plain names
    hashed_host_names: bool = False


@dataclass(frozen=True)
class ValidateConfig:
    """The real daemons' parsers used to check a staged set."""

    dhcpd: str = "/usr/sbin/dhcpd"
    named_checkconf: str = "/usr/bin/named-checkconf"
    chronyd: str = "/usr/sbin/chronyd"
    kea_dhcp6: str = "/usr/sbin/kea-dhcp6"
    timeout: float = 120.0


@dataclass(frozen=True)
class WatchConfig:
    """When to rebuild: polling, debounce and restart pacing (seconds)."""

    poll_interval: float = 2.0
    #: 0: a trigger starts a cycle at once (cycles cost O(change) and host changes go live
    #: without a restart, so waiting for a burst to end only delays the change); what arrives
    #: during a cycle is taken together by the next one
    quiet_period: float = 0.0
    max_delay: float = 15.0
    min_restart_interval: float = 30.0
    periodic_command: tuple[str, ...] = ()
    #: the configfile build is costly (every configfile): its requests are still collected
    periodic_command_quiet_period: float = 1.0
    #: below stall_timeout: the main loop waits for the command without feeding the watchdog
    periodic_command_timeout: float = 240.0
    stall_timeout: float = 300.0
    #: share of the time polls may keep the database busy; longer pauses when they cost more
    max_poll_share: float = 0.1


@dataclass(frozen=True)
class DhcpdConfig:
    """How dhcpd is restarted and checked after a publish."""

    restart_command: tuple[str, ...] = ("systemctl", "restart", "dhcpd.service")
    #: dhcpd needs 30-50 s to start with 500k hosts (50 s measured with the master down)
    restart_timeout: float = 90.0
    check_command: tuple[str, ...] = ("systemctl", "is-active", "--quiet", "dhcpd.service")
    check_timeout: float = 30.0
    check_attempts: int = 5
    check_interval: float = 1.0
    #: host changes (modems, MTAs, endpoints) go live by OMAPI, without a restart
    omapi: bool = True
    #: OMAPI's address (dhcpd listens on omapi-port 7911 of failover.conf, all addresses)
    omapi_host: str = "127.0.0.1"
    omapi_timeout: float = 5.0


@dataclass(frozen=True)
class ServicesConfig:
    """How named and chronyd pick up their changed files."""

    named_reload_command: tuple[str, ...] = ("systemctl", "reload-or-restart", "named.service")
    chrony_reload_command: tuple[str, ...] = ("systemctl", "try-restart", "chrony.service")
    #: try-restart: whether kea-dhcp6 runs on this node is the operator's choice (docs/files.md)
    kea_restart_command: tuple[str, ...] = ("systemctl", "try-restart", "kea-dhcp6.service")
    timeout: float = 60.0


@dataclass(frozen=True)
class SafetyConfig:
    """Guards against publishing a set built from an empty or half-read database."""

    #: a set with this many percent fewer hosts or pools than the live one is held back
    max_shrink_percent: float = 10.0
    #: ... when that is also more than this many hosts (one modem of eight is no accident)
    max_shrink_hosts: int = 50
    #: ... or more than this many pools
    max_shrink_pools: int = 2


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds of ``provhad check``, the Nagios/Icinga plugin. A count threshold alerts at
    that many or more; 0 turns it off."""

    #: seconds since the last successful cycle (the periodic rebuild runs at least hourly)
    age_warning: float = 7200.0
    age_critical: float = 14400.0
    #: rows left out of the live set as invalid
    rejected_warning: int = 1
    rejected_critical: int = 0
    #: modems and MTAs whose TFTP configfile is missing
    missing_configfiles_warning: int = 1
    missing_configfiles_critical: int = 0
    #: severity when reading from a fallback node (not the first configured one)
    db_fallback: str = "warning"
    #: severity when no database node answers
    db_down: str = "critical"
    #: dhcpd's systemd unit: CRITICAL when it is not active. "auto": the unit that
    #: [dhcpd] restart_command names (``systemctl VERB UNIT``); "": not checked
    dhcpd_unit: str = "auto"
    #: other units that must be active (WARNING otherwise), e.g. "tftp.socket". "auto" stands
    #: for the units [services] named_reload_command and chrony_reload_command name
    units: tuple[str, ...] = ("auto",)


@dataclass(frozen=True)
class MqttConfig:
    """The optional MQTT broker: status out, rebuild requests in. Empty host: off."""

    host: str = ""
    port: int = 1883
    username: str = ""
    password: str = field(default="", repr=False)
    topic_prefix: str = "nmsprime/provha"
    trigger_topic: str = "nmsprime/provha/rebuild"
    keepalive: int = 30
    client_id: str = ""
    reconnect_max: float = 30.0


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    own_state: str = "slave"
    paths: PathsConfig = field(default_factory=PathsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    dhcpd: DhcpdConfig = field(default_factory=DhcpdConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    source: str = "<defaults>"

    def with_root(self, root: str | os.PathLike[str]) -> Config:
        """The same configuration writing (and reading) under another root."""
        return replace(self, paths=replace(self.paths, root=str(Path(root).resolve())))

    def fqdn(self) -> str:
        """This node's FQDN (for the MTA provision-server option)."""
        return self.render.fqdn or socket.getfqdn()


_T = TypeVar("_T")

_SECTIONS: dict[str, type] = {
    "database": DatabaseConfig,
    "paths": PathsConfig,
    "render": RenderConfig,
    "validate": ValidateConfig,
    "watch": WatchConfig,
    "dhcpd": DhcpdConfig,
    "services": ServicesConfig,
    "mqtt": MqttConfig,
    "safety": SafetyConfig,
    "check": CheckConfig,
}

_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:\d{1,5})?")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _check_fqdn(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    labels = value.rstrip(".").split(".")
    if value and not all(_LABEL.fullmatch(lab) for lab in labels):
        raise ValueError(f"{value!r} is not a host name (letters, digits, '-', dots)")
    return value.rstrip(".")


def _check_hosts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError('must be a non-empty list of "host[:port]" strings')
    out = []
    for item in value:
        if not isinstance(item, str) or not _HOST_RE.fullmatch(item.strip()):
            raise ValueError(f'{item!r} is not "host" or "host:port"')
        out.append(item.strip())
    return tuple(out)


def _check_abs_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("must be an absolute path (a string starting with /)")
    return value


def _check_timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError('must be a string such as "Europe/Berlin"')
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


SEVERITIES = ("ok", "warning", "critical")


def _check_share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{value!r} is not a share greater than 0 and at most 1")
    return float(value)


def _check_severity(value: Any) -> str:
    if value not in SEVERITIES:
        raise ValueError(f"{value!r} is not one of {', '.join(SEVERITIES)}")
    return str(value)


#: pacing values where 0 means "no wait"
_ZERO_OK = frozenset(
    {
        "quiet_period",
        "periodic_command_quiet_period",
        "min_restart_interval",
        "check_interval",
        "max_shrink_percent",
    }
)

_SPECIAL: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("database", "hosts"): _check_hosts,
    ("render", "timezone"): _check_timezone,
    ("render", "fqdn"): _check_fqdn,
    ("check", "db_fallback"): _check_severity,
    ("check", "db_down"): _check_severity,
    ("watch", "max_poll_share"): _check_share,
}

#: integer keys with a range (inclusive)
_RANGES: dict[str, tuple[int, int]] = {
    "default_network_prefix": (8, 30),
    "port": (1, 65535),
    "keepalive": (5, 3600),
    "check_attempts": (1, 100),
}
#: commands that must not be empty (an empty one would silently do nothing)
_REQUIRED_COMMANDS = frozenset({"restart_command", "check_command"})


def _convert(section: str, key: str, value: Any, default: Any) -> Any:
    special = _SPECIAL.get((section, key))
    if special is not None:
        return special(value)
    if section == "paths":
        return _check_abs_path(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings (a command and its arguments)")
        if key in _REQUIRED_COMMANDS and not value:
            raise ValueError("must name a command (an empty one would never run)")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        low, high = _RANGES.get(key, (0, 2**31))
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if key in _ZERO_OK and value == 0:
            return 0.0
        if value <= 0:
            raise ValueError("must be greater than 0" + (" (or 0)" if key in _ZERO_OK else ""))
        return float(value)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _section(file: str, name: str, data: Any, cls: type[_T]) -> _T:
    if not isinstance(data, dict):
        raise ConfigError(file, name, "must be a table ([" + name + "])")
    defaults = cls()
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                file, f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})"
            )
        try:
            values[key] = _convert(name, key, value, getattr(defaults, key))
        except ValueError as exc:
            raise ConfigError(file, f"{name}.{key}", str(exc)) from None
    return replace(defaults, **values)  # type: ignore[type-var]


def _read(path: str | os.PathLike[str]) -> bytes:
    """A configuration file's bytes; any read error as a ConfigError naming the file."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except PermissionError:
        raise ConfigError(path, "", "permission denied") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot be read: {exc.strerror or exc}") from None


def _decode(path: str | os.PathLike[str], data: bytes) -> str:
    """``data`` as UTF-8, or a ConfigError naming the line with the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path, "", f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file as Laravel writes them (``KEY=value``, optional quotes, # comments).

    Raises :class:`ConfigError` when the file cannot be read or is not UTF-8.
    """
    out: dict[str, str] = {}
    for line in _decode(path, _read(path)).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        out[key] = value
    return out


def _database_from_env(paths: PathsConfig) -> tuple[DatabaseConfig, str, str | None]:
    """DatabaseConfig from NMS Prime's global.env; also returns its APP_TIMEZONE."""
    env_path = paths.under_root(paths.nmsprime_env_dir) / "global.env"
    if not env_path.is_file():
        raise ConfigError(
            env_path,
            "",
            "no [database] section in the config and NMS Prime's global.env is missing",
        )
    env = parse_env_file(env_path)
    port = env.get("DB_PORT", "3306") or "3306"
    if not port.isdigit():
        raise ConfigError(env_path, "DB_PORT", f"{port!r} is not a port number")
    hosts_raw = [h.strip() for h in env.get("DB_HOST", "").split(",") if h.strip()]
    if not hosts_raw and not env.get("DB_SOCKET"):
        raise ConfigError(env_path, "DB_HOST", "is empty and DB_SOCKET is not set")
    hosts = tuple(h if ":" in h else f"{h}:{port}" for h in hosts_raw) or ("localhost:3306",)
    try:
        _check_hosts(list(hosts))
    except ValueError as exc:
        raise ConfigError(env_path, "DB_HOST", str(exc)) from None
    db = DatabaseConfig(
        hosts=hosts,
        user=env.get("DB_USERNAME", "") or DatabaseConfig.user,
        password=env.get("DB_PASSWORD", ""),
        name=env.get("DB_DATABASE", "") or DatabaseConfig.name,
        socket=env.get("DB_SOCKET", ""),
    )
    return db, str(env_path), env.get("APP_TIMEZONE") or None


def _own_state_from_env(paths: PathsConfig) -> str:
    env_path = paths.under_root(paths.nmsprime_env_dir) / "provha.env"
    if not env_path.is_file():
        raise ConfigError(
            env_path,
            "",
            "no [provha] own_state in the config and NMS Prime's provha.env is missing",
        )
    state = parse_env_file(env_path).get("PROVHA__OWN_STATE", "").strip().lower()
    if state not in ROLES:
        raise ConfigError(env_path, "PROVHA__OWN_STATE", f"{state!r} is not one of master, slave")
    return state


def load(path: str | os.PathLike[str] | None, root: str | None = None) -> Config:
    """Load the TOML file at ``path`` (or only defaults and env files when ``None``).

    ``root`` overrides ``[paths] root`` (the ``--root`` option) before the env files are read.
    """
    file = str(path) if path is not None else "<no config file>"
    data: dict[str, Any] = {}
    if path is not None:
        text = _decode(file, _read(file))
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(file, "", f"invalid TOML: {exc}") from None
    for key in data:
        if key not in (*_SECTIONS, "provha"):
            raise ConfigError(
                file, key, f"unknown section (known: {', '.join(sorted((*_SECTIONS, 'provha')))})"
            )
    sections: dict[str, Any] = {
        name: _section(file, name, data[name], cls)
        for name, cls in _SECTIONS.items()
        if name in data
    }
    paths: PathsConfig = sections.get("paths", PathsConfig())
    if root is not None:
        paths = replace(paths, root=str(Path(root).resolve()))
    sections["paths"] = paths

    provha = data.get("provha", {})
    if not isinstance(provha, Mapping):
        raise ConfigError(file, "provha", "must be a table ([provha])")
    for key in provha:
        if key != "own_state":
            raise ConfigError(file, f"provha.{key}", "unknown key (known: own_state)")
    own_state = provha.get("own_state")
    if own_state is None:
        own_state = _own_state_from_env(paths)
    elif own_state not in ROLES:
        raise ConfigError(file, "provha.own_state", f"{own_state!r} is not one of master, slave")

    render: RenderConfig = sections.get("render", RenderConfig())
    if "database" not in sections:
        db, _env_file, tz = _database_from_env(paths)
        sections["database"] = db
        if tz and "timezone" not in data.get("render", {}):
            try:
                render = replace(render, timezone=_check_timezone(tz))
            except ValueError as exc:
                raise ConfigError(_env_file, "APP_TIMEZONE", str(exc)) from None
    sections["render"] = render
    cfg = Config(own_state=own_state, source=file, **sections)
    check_timing(cfg, file, _given(data))
    return cfg


# --- timeouts that must fit together ------------------------------------------------------

#: keys that must stay below ``watch.stall_timeout``, and how the loop spends that long
_BELOW_STALL = {
    "watch.poll_interval": "polls this far apart",
    "watch.periodic_command_timeout": "periodic_command may run this long",
    "validate.timeout": "a validator may run this long",
    "services.timeout": "a reload command may run this long",
    "database.connect_timeout": "a database node may take this long to answer",
}
#: the watchdog's verdict on a loop that spent stall_timeout on one of them
_HUNG = (
    "the watchdog takes a loop without progress for that long as hung, "
    "so systemd would restart a healthy daemon"
)
_STALL = "watch.stall_timeout"


def _given(data: Mapping[str, Any]) -> frozenset[str]:
    """The ``section.key`` names the file sets (the others have their defaults)."""
    return frozenset(
        f"{name}.{key}"
        for name, section in data.items()
        if isinstance(section, Mapping)
        for key in section
    )


def _value(cfg: Config, dotted: str) -> float:
    section, key = dotted.split(".")
    return float(getattr(getattr(cfg, section), key))


def check_timing(cfg: Config, file: str, given: frozenset[str] = frozenset()) -> None:
    """Raise :class:`ConfigError` for timeouts that cannot fit together.

    ``given`` names the keys the file sets; the message marks the others as defaults, so an
    operator sees which key to change.
    """

    def shown(dotted: str) -> str:
        value = f"{_value(cfg, dotted):g} s"
        return value if dotted in given else f"{value}, the default"

    stall = _value(cfg, _STALL)
    for quiet in ("watch.quiet_period", "watch.periodic_command_quiet_period"):
        if _value(cfg, quiet) > cfg.watch.max_delay:
            raise ConfigError(
                file,
                quiet,
                f"{shown(quiet)} must not exceed watch.max_delay "
                f"({shown('watch.max_delay')}): max_delay bounds the debounce",
            )
    for dotted, why in _BELOW_STALL.items():
        if _value(cfg, dotted) >= stall:
            raise ConfigError(
                file,
                dotted,
                f"{shown(dotted)} must be below {_STALL} ({shown(_STALL)}): {why}; {_HUNG}",
            )
    d = cfg.dhcpd
    restart = d.restart_timeout + d.check_attempts * (d.check_timeout + d.check_interval)
    if restart >= stall:
        raise ConfigError(
            file,
            "dhcpd.restart_timeout",
            f"{shown('dhcpd.restart_timeout')} + dhcpd.check_attempts ({d.check_attempts}) * "
            f"(dhcpd.check_timeout ({shown('dhcpd.check_timeout')}) + dhcpd.check_interval "
            f"({shown('dhcpd.check_interval')})) = {restart:g} s must be below {_STALL} "
            f"({shown(_STALL)}): a dhcpd restart and its checks may take this long; {_HUNG}",
        )
