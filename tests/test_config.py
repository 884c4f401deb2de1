"""config.load: timeouts that must fit together, and files it cannot read or decode."""

from __future__ import annotations

from pathlib import Path

import pytest

from provhad import config

# [database] and [provha] given, so no env file is needed
BASE = '[provha]\nown_state = "slave"\n[database]\nhosts = ["db1"]\n'


def load(tmp_path: Path, text: str) -> config.Config:
    """``text`` after BASE; a ``[database]`` in it continues BASE's section."""
    path = tmp_path / "provhad.toml"
    path.write_text(BASE + text.removeprefix("[database]\n"))
    return config.load(path, root=str(tmp_path / "root"))


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_the_defaults_load() -> None:
    defaults = config.Config()
    config.check_timing(defaults, "<defaults>")
    assert defaults.watch.periodic_command_timeout < defaults.watch.stall_timeout
    assert defaults.dhcpd.restart_timeout >= 90  # a 500k-host dhcpd took 50 s to start


def test_an_empty_file_loads(tmp_path: Path) -> None:
    assert load(tmp_path, "").watch == config.WatchConfig()


# Each rule, broken by as little as possible; the key it names and what the message says.
RULES = [
    (
        "[watch]\nquiet_period = 15.5\n",
        "watch.quiet_period: 15.5 s must not exceed watch.max_delay (15 s, the default)",
    ),
    (
        "[watch]\nmax_delay = 10\nperiodic_command_quiet_period = 10.5\n",
        "watch.periodic_command_quiet_period: 10.5 s must not exceed watch.max_delay (10 s)",
    ),
    (
        "[watch]\nperiodic_command_timeout = 600\n",
        "watch.periodic_command_timeout: 600 s must be below watch.stall_timeout "
        "(300 s, the default): periodic_command may run this long; the watchdog",
    ),
    (
        "[watch]\nstall_timeout = 250\n[validate]\ntimeout = 250\n",
        "validate.timeout: 250 s must be below watch.stall_timeout (250 s): a validator",
    ),
    (
        "[services]\ntimeout = 300\n",
        "services.timeout: 300 s must be below watch.stall_timeout (300 s, the default)",
    ),
    (
        "[database]\nconnect_timeout = 301\n",
        "database.connect_timeout: 301 s must be below watch.stall_timeout",
    ),
    (
        "[watch]\npoll_interval = 300\n",
        "watch.poll_interval: 300 s must be below watch.stall_timeout",
    ),
    (
        "[dhcpd]\nrestart_timeout = 145\ncheck_attempts = 5\n",
        "dhcpd.restart_timeout: 145 s + dhcpd.check_attempts (5) * (dhcpd.check_timeout "
        "(30 s, the default) + dhcpd.check_interval (1 s, the default)) = 300 s must be below "
        "watch.stall_timeout (300 s, the default): a dhcpd restart and its checks",
    ),
]


@pytest.mark.parametrize(("text", "expect"), RULES)
def test_each_timing_rule(tmp_path: Path, text: str, expect: str) -> None:
    assert error(tmp_path, text).startswith(f"{tmp_path / 'provhad.toml'}: {expect}")


@pytest.mark.parametrize(
    "text",
    [
        "[watch]\nquiet_period = 15\n",
        "[watch]\nperiodic_command_quiet_period = 15\n",
        "[watch]\nperiodic_command_timeout = 299.5\n",
        "[validate]\ntimeout = 299\n",
        "[services]\ntimeout = 299\n",
        "[watch]\npoll_interval = 299\n",
        "[database]\nconnect_timeout = 299\n",
        "[dhcpd]\nrestart_timeout = 144.5\n",
        "[watch]\nstall_timeout = 900\nperiodic_command_timeout = 600\n",
    ],
)
def test_values_just_inside_the_rules_load(tmp_path: Path, text: str) -> None:
    load(tmp_path, text)


# --- files that cannot be read ------------------------------------------------------------


def test_toml_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "provhad.toml"
    path.write_bytes(BASE.encode() + b'[render]\nfqdn = "h\xe4st"\n')
    with pytest.raises(config.ConfigError, match=r"provhad\.toml: line 6: not UTF-8 \(byte 0xe4\)"):
        config.load(path)


def test_a_directory_as_config_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r": cannot be read: Is a directory"):
        config.load(tmp_path)


def env_root(
    tmp_path: Path, global_env: bytes, provha_env: bytes = b"PROVHA__OWN_STATE=slave\n"
) -> Path:
    env = tmp_path / "root/etc/nmsprime/env"
    env.mkdir(parents=True)
    (env / "global.env").write_bytes(global_env)
    (env / "provha.env").write_bytes(provha_env)
    return tmp_path / "root"


def test_env_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    root = env_root(tmp_path, b"DB_HOST=db1\nDB_USERNAME=slaveread\nDB_PASSWORD=s\xffcret\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(None, root=str(root))
    assert str(info.value) == (f"{root}/etc/nmsprime/env/global.env: line 3: not UTF-8 (byte 0xff)")


def test_provha_env_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    root = env_root(tmp_path, b"DB_HOST=db1\n", b"# \xc3\nPROVHA__OWN_STATE=slave\n")
    with pytest.raises(config.ConfigError, match=r"provha\.env: line 1: not UTF-8 \(byte 0xc3\)"):
        config.load(None, root=str(root))


def test_unreadable_env_file_is_a_config_error(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.mkdir()
    (env / "global.env").mkdir()  # passes no is_file(); read directly it fails
    with pytest.raises(config.ConfigError, match=r"global\.env: cannot be read: Is a directory"):
        config.parse_env_file(env / "global.env")


def test_env_file_still_parses(tmp_path: Path) -> None:
    root = env_root(tmp_path, b'DB_HOST=db1,db2\nDB_PASSWORD="pa ss#"\nAPP_TIMEZONE=UTC\n')
    cfg = config.load(None, root=str(root))
    assert cfg.database.hosts == ("db1:3306", "db2:3306")
    assert cfg.database.password == "pa ss#"
    assert cfg.render.timezone == "UTC"
