"""Turn build settings into the files mkosi consumes: the one place they are rendered.

Everything that depends on a setting (the apt sources for the mirror, the init's
configuration, the core) is written under ``build/render/`` from jinja2 templates
and copies; nothing in the repository is edited.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2

from appliance import initconf
from appliance.builder.mirror import Mirrors
from appliance.initconf import Config

INIT_DEFAULTS = Config()

# Where things live inside the image.
IMAGE_PYTHON_DIR = "usr/lib/appliance/python"
IMAGE_CORE_DIR = "usr/lib/appliance/core"
IMAGE_CONFIG = "etc/appliance/init.conf"
IMAGE_REPORTS_CA = "etc/appliance/crash-reports-ca.pem"  # CRASH_REPORTS_CA=, copied in
IMAGE_UPDATE_CA = "etc/appliance/update-ca.pem"  # UPDATE_CA=, copied in
# Subpackages that run inside the image; the host-side ones stay out of it.
IN_IMAGE_PACKAGES = ("init", "esp", "core", "report", "channel")
IN_IMAGE_MODULES = ("update.py", "screen.py", "efivars.py", "initconf.py", "running.py")  # update, screen: the core's
HOST_ONLY = ("channel/publish.py",)  # make publish's side of the channel


class CoreError(Exception):
    """The core given to the build cannot be used."""


RELEASE = "trixie"  # the image's Debian release (mkosi.conf's Release=)


@dataclass(frozen=True)
class Settings:
    repo: Path
    core: Path
    mirrors: Mirrors
    profile: str = "default"
    release: str = RELEASE
    hostname: str = initconf.DEFAULT_HOSTNAME
    # The init's settings baked into the image; their defaults are the init's own.
    runtime_log_cap: int = INIT_DEFAULTS.runtime_log_cap
    history_records: int = INIT_DEFAULTS.history_records
    history_bytes: int = INIT_DEFAULTS.history_bytes
    esp_free_floor: int = INIT_DEFAULTS.esp_free_floor
    esp_wait_seconds: float = INIT_DEFAULTS.esp_wait_seconds
    shutdown_grace_seconds: float = INIT_DEFAULTS.shutdown_grace_seconds
    core_memory_max: str | None = INIT_DEFAULTS.core_memory_max
    core_watchdog_seconds: float = INIT_DEFAULTS.core_watchdog_seconds
    hw_watchdog_seconds: int = INIT_DEFAULTS.hw_watchdog_seconds
    network: str = INIT_DEFAULTS.network
    network_wait_seconds: float = INIT_DEFAULTS.network_wait_seconds
    time_servers: tuple[str, ...] = ()  # SNTP servers before DHCP's (NTP=); checked by check_fleet
    syslog: str = ""  # host:port of a syslog receiver (SYSLOG=); checked by check_fleet
    crash_reports: str = ""  # a Sentry DSN (CRASH_REPORTS=); checked by check_fleet
    crash_reports_ca: Path | None = None  # a CA bundle for a private tracker (CRASH_REPORTS_CA=)
    data_size: str = INIT_DEFAULTS.data_size  # rest | none | bytes: see data_size() (DATA_SIZE=)
    update_channel: str = ""  # the channel's URL (UPDATE_CHANNEL=); checked by check_update
    update_interval_seconds: float = INIT_DEFAULTS.update_interval_seconds
    update_ca: Path | None = None  # a CA bundle for the channel's TLS (UPDATE_CA=)
    channel_root: Path | None = None  # the channel's root metadata (from its keys: appliance.channel.publish)


def check_fleet(network: str, time_servers: tuple[str, ...] = (), syslog: str = "", crash_reports: str = "",
                crash_reports_ca: Path | None = None) -> None:
    """NTP=, SYSLOG=, CRASH_REPORTS= and CRASH_REPORTS_CA=, before any long work: each
    goes over the network, and each must be usable as given."""
    from appliance.init import sntp
    from appliance.init import syslog as syslogs
    from appliance.report import dsn as dsns
    if crash_reports_ca is not None and not crash_reports:
        raise CoreError("CRASH_REPORTS_CA= is for CRASH_REPORTS= (a tracker's DSN), which is not set")
    for variable, value in (("NTP", " ".join(time_servers)), ("SYSLOG", syslog), ("CRASH_REPORTS", crash_reports)):
        if value and network != "dhcp":
            raise CoreError(f"{variable}= goes over the network: build with NETWORK=dhcp too")
    for server in time_servers:
        try:
            sntp.parse_server(server)
        except (OSError, ValueError):
            raise CoreError(f"NTP={server!r}: an IPv4 address, with :port if not 123 (no names: the init "
                            "asks before any DNS)") from None
    try:
        if syslog:
            syslogs.parse_target(syslog)  # its error names SYSLOG=
    except ValueError as e:
        raise CoreError(str(e)) from None
    try:
        if crash_reports:
            dsns.parse(crash_reports)
    except ValueError as e:
        raise CoreError(f"CRASH_REPORTS={crash_reports!r}: {e}") from None
    if crash_reports_ca is not None and not (crash_reports_ca.is_file() and b"-----BEGIN CERTIFICATE-----" in
                                             crash_reports_ca.read_bytes()[:1 << 20]):
        raise CoreError(f"CRASH_REPORTS_CA={crash_reports_ca}: not a file of PEM certificates")


def check_update(network: str, url: str, interval: float, ca: Path | None) -> None:
    """UPDATE_CHANNEL=, UPDATE_INTERVAL= and UPDATE_CA=, before any long work."""
    if not url:
        if ca is not None:
            raise CoreError("UPDATE_CA= is for UPDATE_CHANNEL= (a channel's URL), which is not set")
        return
    if network != "dhcp":
        raise CoreError("UPDATE_CHANNEL= goes over the network: build with NETWORK=dhcp too")
    if not url.startswith(("http://", "https://")) or len(url) > 500 or any(c.isspace() for c in url):
        raise CoreError(f"UPDATE_CHANNEL={url!r}: the channel's http:// or https:// URL (make publish's directory, "
                        "served by any web server)")
    if not interval >= 5:
        raise CoreError(f"UPDATE_INTERVAL={interval:g}: seconds between checks, at least 5")
    if ca is not None and not (ca.is_file() and b"-----BEGIN CERTIFICATE-----" in ca.read_bytes()[:1 << 20]):
        raise CoreError(f"UPDATE_CA={ca}: not a file of PEM certificates")


def data_size(text: str) -> str:
    """DATA_SIZE= as the init reads it: "rest" (the default: the rest of the disk), "none"
    (no data partition) or a number of bytes (given with K, M, G or T of 1024, or none)."""
    from appliance.init import data
    text = text.strip() or "rest"
    if text in ("rest", "none"):
        return text
    try:
        size = data.parse_size(text)
    except ValueError as e:
        raise CoreError(f"DATA_SIZE={text!r}: {e}; or 'rest' (the default) or 'none'") from None
    return str(size)


def check_core(core: Path) -> Path:
    """The core's entry file, after checking it is Python that compiles.

    A core is a ``.py`` file, or a directory holding ``__main__.py``. This runs before
    any long work, so a wrong path fails in a second, not after the image build.
    """
    if not core.exists():
        raise CoreError(f"core not found: {core} (CORE= names a .py file or a directory with __main__.py)")
    if core.is_dir():
        entry = core / "__main__.py"
        if not entry.is_file():
            raise CoreError(f"core directory {core} has no __main__.py")
    elif core.suffix != ".py":
        raise CoreError(f"core {core} is not a Python file (expected a .py file or a directory with __main__.py)")
    else:
        entry = core
    sources = sorted(core.rglob("*.py")) if core.is_dir() else [core]
    for source in sources:
        data = source.read_bytes()
        if b"\0" in data:  # Python versions differ in how they report this; say it plainly
            raise CoreError(f"core {source} is not Python source: it contains NUL bytes (binary data?)")
        try:
            ast.parse(data, filename=str(source))
        except SyntaxError as e:
            raise CoreError(f"core {source} is not valid Python: {e.msg} (line {e.lineno})") from e
    return entry


def read_module_list(path: Path) -> list[str]:
    """Module names from ``initramfs/modules.txt`` ('#' comments, blank lines ignored)."""
    names = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def check_hostname(name: str) -> None:
    if not initconf.valid_hostname(name):
        raise CoreError(f"HOSTNAME={name!r} is not a host name: lower-case letters, digits and '-' in "
                        "dot-separated labels, at most 64 characters")


def hosts_file(hostname: str) -> str:
    """/etc/hosts: localhost, and the machine's own name on 127.0.1.1 as Debian does."""
    names = hostname if "." not in hostname else f"{hostname} {hostname.split('.')[0]}"
    return (f"127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n"
            "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")


def _environment(repo: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([repo / "templates", repo / "initramfs"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def write_sources(repo: Path, mirrors: Mirrors, network: str, into: Path, release: str = RELEASE) -> Path:
    """The apt sources of the image's release (mkosi's, and apt's for the ESP's and the
    kernel's packages): ``into``/mkosi.sources."""
    into.mkdir(parents=True, exist_ok=True)
    (into / "mkosi.sources").write_text(_environment(repo).get_template("mkosi.sources.j2").render(
        mirror=mirrors.main,
        security_mirror=mirrors.security,
        release=release,
        # NETWORK=: the NICs' firmware (firmware-realtek) lives in non-free-firmware.
        components="main non-free-firmware" if network != "off" else "main",
    ))
    return into


def render(settings: Settings, out: Path) -> None:
    """Write ``out/pkgmngr`` (apt sources) and ``out/extra`` (the init, config, core)."""
    entry = check_core(settings.core)
    repo = settings.repo
    env = _environment(repo)
    if out.exists():
        shutil.rmtree(out)

    write_sources(repo, settings.mirrors, settings.network, out / "pkgmngr/etc/apt/sources.list.d", settings.release)

    extra = out / "extra"
    for name in ("init", "launch-core"):
        dest = extra / (name if name == "init" else "usr/lib/appliance/launch-core")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / "initramfs" / name, dest)
        dest.chmod(0o755)

    package = repo / "python/appliance"
    pydest = extra / IMAGE_PYTHON_DIR / "appliance"
    pydest.mkdir(parents=True)
    shutil.copy2(package / "__init__.py", pydest / "__init__.py")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in IN_IMAGE_PACKAGES:
        shutil.copytree(package / sub, pydest / sub, ignore=ignore)
    for module in IN_IMAGE_MODULES:
        shutil.copy2(package / module, pydest / module)
    for module in HOST_ONLY:
        (pydest / module).unlink()

    coredest = extra / IMAGE_CORE_DIR
    if settings.core.is_dir():
        shutil.copytree(settings.core, coredest, ignore=ignore)
        shutil.rmtree(coredest / "wheels", ignore_errors=True)  # the core's own wheels: installed, not copied
        core_path = "/" + IMAGE_CORE_DIR
    else:
        coredest.mkdir(parents=True)
        shutil.copy2(entry, coredest / entry.name)
        core_path = f"/{IMAGE_CORE_DIR}/{entry.name}"

    check_hostname(settings.hostname)
    (extra / "etc").mkdir(exist_ok=True)
    (extra / "etc/hostname").write_text(settings.hostname + "\n")
    (extra / "etc/hosts").write_text(hosts_file(settings.hostname))

    config = extra / IMAGE_CONFIG
    config.parent.mkdir(parents=True)
    check_fleet(settings.network, settings.time_servers, settings.syslog, settings.crash_reports,
                settings.crash_reports_ca)
    if settings.crash_reports_ca is not None:
        shutil.copy2(settings.crash_reports_ca, extra / IMAGE_REPORTS_CA)
    check_update(settings.network, settings.update_channel, settings.update_interval_seconds, settings.update_ca)
    if settings.update_ca is not None:
        shutil.copy2(settings.update_ca, extra / IMAGE_UPDATE_CA)
    if settings.channel_root is not None:
        shutil.copy2(settings.channel_root, extra / initconf.CHANNEL_ROOT.lstrip("/"))
    config.write_text(env.get_template("appliance.conf.j2").render(
        core_path=core_path,
        modules=read_module_list(repo / "initramfs/modules.txt"),
        runtime_log_cap=settings.runtime_log_cap,
        history_records=settings.history_records,
        history_bytes=settings.history_bytes,
        esp_free_floor=settings.esp_free_floor,
        esp_wait_seconds=settings.esp_wait_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        core_memory_max=settings.core_memory_max,
        core_watchdog_seconds=settings.core_watchdog_seconds,
        hw_watchdog_seconds=settings.hw_watchdog_seconds,
        network=settings.network,
        network_wait_seconds=settings.network_wait_seconds,
        time_servers=settings.time_servers,
        syslog=settings.syslog,
        crash_reports=settings.crash_reports,
        crash_reports_ca=f"/{IMAGE_REPORTS_CA}" if settings.crash_reports_ca else "",
        data_size=data_size(settings.data_size),
        update_channel=settings.update_channel,
        update_interval_seconds=settings.update_interval_seconds,
        update_ca=f"/{IMAGE_UPDATE_CA}" if settings.update_ca else "",
        profile=settings.profile,
    ))
