"""``python -m appliance.builder``: the steps behind ``make image`` and ``make size``."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from appliance import initconf
from appliance.builder import (
    bootmgr,
    debfiles,
    deps,
    disk,
    identity,
    inspect,
    kernel,
    mirror,
    mkosi,
    packages,
    render,
    shim,
    signing,
)
from appliance.channel.publish import Keys, PublishError
from appliance.channel.publish import default_keys_dir as publish_keys_dir


class Steps:
    """The build's steps, each said as it starts and timed when the next one starts."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.since = total, 0, 0.0

    def __call__(self, what: str) -> None:
        self.done()
        self.n += 1
        print(f"build: [{self.n}/{self.total}] {what}", file=sys.stderr, flush=True)
        self.since = time.monotonic()

    def done(self) -> None:
        if self.n:
            print(f"build: [{self.n}/{self.total}] took {time.monotonic() - self.since:.1f} s", file=sys.stderr,
                  flush=True)


CHANNEL_PACKAGES = ["python3-tuf"]  # the update checker's TUF client (Debian's; it brings securesystemslib)


def channel_keys(args: argparse.Namespace) -> Path:
    """The channel's root metadata for the image: from its keys, made on the first build."""
    keys = Keys(Path(args.channel_keys) if args.channel_keys else publish_keys_dir())
    keys.ensure(say=lambda line: print(f"build: {line}", file=sys.stderr))
    print(f"build: update channel {args.update_channel}, root metadata {keys.root_path}", file=sys.stderr)
    return keys.root_path


def cmd_image(args: argparse.Namespace) -> int:
    repo = Path(args.repo).resolve()
    build = Path(args.build_dir).resolve()
    core = Path(args.core) if args.core else repo / "examples/demo-core.py"
    reports_ca = Path(args.crash_reports_ca).resolve() if args.crash_reports_ca else None
    started = time.monotonic()
    own_kernel = args.kernel == "appliance"
    _step = Steps(6 if own_kernel else 5)

    _step(f"checking the core {core} and rendering the build settings")
    try:
        kernel.check_choice(args.kernel)
        render.check_core(core)
        mirrors = mirror.host_mirrors(args.mirror or None, args.security_mirror)
        key = signing_key(args)
        if args.image_version:
            identity.check_version(args.image_version)
        render.check_hostname(args.hostname)
        render.check_fleet(args.network, tuple(args.time_servers.split()), args.syslog, args.crash_reports, reports_ca)
        data_size = render.data_size(args.data_size)
        if args.update_channel and args.network == "off":
            args.network = "dhcp"
            print("build: UPDATE_CHANNEL= implies NETWORK=dhcp", file=sys.stderr)
        update_ca = Path(args.update_ca).resolve() if args.update_ca else None
        render.check_update(args.network, args.update_channel, args.update_interval, update_ca)
        channel_root = channel_keys(args) if args.update_channel else None
        debs = packages.wanted(core, args.packages) + (CHANNEL_PACKAGES if channel_root else [])
    except (render.CoreError, mirror.MirrorError, signing.SigningError, identity.IdentityError,
            packages.PackagesError, PublishError, kernel.KernelError) as e:
        print(f"build: error: {e}", file=sys.stderr)
        return 2
    print(f"build: mirror {mirrors.main}" + (f", security {mirrors.security}" if mirrors.security else
                                              ", no security archive"), file=sys.stderr)
    settings = render.Settings(
        repo=repo, core=core.resolve(), mirrors=mirrors, profile=args.profile,
        runtime_log_cap=args.runtime_log_cap, core_memory_max=args.core_memory_max or None,
        history_records=args.history_records, hw_watchdog_seconds=args.hw_watchdog_seconds,
        hostname=args.hostname, network=args.network, network_wait_seconds=args.network_wait,
        crash_reports=args.crash_reports, crash_reports_ca=reports_ca, time_servers=tuple(args.time_servers.split()),
        syslog=args.syslog, data_size=data_size, update_channel=args.update_channel,
        update_interval_seconds=args.update_interval, update_ca=update_ca, channel_root=channel_root,
    )
    render_dir = build / "render"
    render.render(settings, render_dir)
    sources = render_dir / "pkgmngr/etc/apt/sources.list.d"
    kernel_tree: Path | None = None
    built_kernel = ""
    if own_kernel:
        _step(f"the appliance kernel ({kernel.SOURCE_PACKAGE} with {kernel.FRAGMENT})")
        built = build_kernel(repo, sources, Path(args.cache_dir))
        if built is None:
            return 1
        try:
            firmware = kernel.nic_firmware(sources, Path(args.cache_dir).resolve() / "kernel") \
                if args.network != "off" else None
        except (kernel.KernelError, subprocess.CalledProcessError) as e:
            print(f"build: error: {e}", file=sys.stderr)
            return 1
        kernel_tree = kernel.image_tree(built, build / "kernel-tree", firmware)
        built_kernel = f"{built.release} {built.key}"

    _step("installing the core's Python dependencies (wheels for the image's Python, through pip)")
    pip_log = build / "logs" / deps.LOG_NAME
    try:
        got = deps.install(core, render_dir / "extra", Path(args.cache_dir).resolve() / "pip", pip_log)
    except deps.DepsError as e:
        print(f"build: error: {e}", file=sys.stderr)
        tail = pip_log.read_text(errors="replace").splitlines()[-15:] if pip_log.exists() else []
        for line in tail:
            print(f"build: pip: {line}", file=sys.stderr)
        print(f"build: pip's whole output: {pip_log}", file=sys.stderr)
        return 2
    if got is None:
        print("build: the core asks for no dependencies (requirements.txt or pyproject.toml beside it)",
              file=sys.stderr)
    else:
        print(f"build: {len(got.packages)} dependenc{'y' if len(got.packages) == 1 else 'ies'}, "
              f"{got.size / disk.MIB:.1f} MiB: "
              + ", ".join(f"{n} {v}" for n, v in got.packages), file=sys.stderr)
    build_id = identity.build_id([("extra", render_dir / "extra"), *((name, repo / name) for name in
                                                                     identity.CONFIG_INPUTS)],
                                 {"profile": args.profile, "secure-boot": args.secure_boot, "network": args.network,
                                  "packages": " ".join(debs), "kernel": built_kernel or args.kernel})
    version = args.image_version or identity.default_version(build_id)
    identity.write_fragment(render_dir / "extra", version, build_id)
    print(f"build: image {version} (build id {build_id})", file=sys.stderr)

    _step("building the image tree and the UKI with mkosi (first run: downloads packages)")
    out = build / "mkosi"
    out.mkdir(parents=True, exist_ok=True)
    if debs:
        print(f"build: Debian packages for the core: {' '.join(debs)}", file=sys.stderr)
    # A network image has more packages, a debug image a shell: each its own incremental
    # cache, so that building it does not throw away the others' (mkosi keeps one per
    # cache directory).
    incremental = "incremental" if args.network == "off" else \
        "incremental-channel" if channel_root else "incremental-network"
    if own_kernel:
        incremental += "-appliance-kernel"
    if args.profile != "default":
        incremental += f"-{args.profile}"
    cmd = mkosi.mkosi_command(repo, render_dir, out, Path(args.cache_dir).resolve(), args.profile, packages=debs,
                              network=args.network != "off", incremental=incremental, kernel_tree=kernel_tree)
    try:
        mkosi.run_mkosi(cmd, log=build / "logs" / "mkosi.log")
    except RuntimeError as e:
        print(f"build: error: {e}", file=sys.stderr)
        return 1
    efi = build / "appliance.efi"
    try:
        if key is None:
            shutil.copy2(out / "appliance.efi", efi)
        else:
            signing.sign(out / "appliance.efi", efi, key)  # sbverify checks it
            print(f"build: UKI signed for Secure Boot ({args.secure_boot}) with {key.cert}", file=sys.stderr)
        boot_manager = bootmgr.fetch(sources, Path(args.cache_dir).resolve() / "systemd-boot")
        files = bootmgr.esp_files(efi, version, boot_manager, build / "esp", key)
        if args.secure_boot == "shim":
            found = shim.fetch(sources, Path(args.cache_dir).resolve() / "shim")
            assert key is not None  # shim implies a key: signing_key gave one
            files.update(shim.layout(found, files[bootmgr.REMOVABLE_PATH],
                                     signing.der(key.cert, build / shim.MOK_ENROLL_FILE)))
    except (signing.SigningError, debfiles.DebError) as e:
        print(f"build: error: {e}", file=sys.stderr)
        return 1

    _step("laying out the GPT disk image with the ESP")
    raw = build / "appliance.raw"
    # Room for two more images beside the first (the previous one and a staged update),
    # then the crash history's reserve.
    spare = 2 * efi.stat().st_size + args.esp_free_mib * disk.MIB
    layout = disk.make_disk(efi, raw, free=spare, files=files)
    disk.make_bmap(raw, build / "appliance.bmap")

    _step("checking the result")
    report = inspect.size_report(efi)
    print(report.summary(), file=sys.stderr)
    print(f"build: ESP {layout.esp_size // disk.MIB} MiB: room for 2 more images (a staged update, the previous "
          f"one) and at least {args.esp_free_mib} MiB for crash history", file=sys.stderr)
    _step.done()
    print(f"build: done in {time.monotonic() - started:.1f} s: {raw} ({raw.stat().st_size // disk.MIB} MiB), {efi}",
          file=sys.stderr)
    return 0


def signing_key(args: argparse.Namespace) -> signing.Key | None:
    """The key the image is signed with, or None (SECURE_BOOT=off). A debug image is never
    signed with the production key unless asked for in so many words."""
    if args.secure_boot == "off":
        return None
    if bool(args.sb_key) != bool(args.sb_cert):
        raise signing.SigningError("give both SB_KEY= and SB_CERT= (or neither, for the key in KEYS_DIR)")
    if args.sb_key:
        key = signing.Key(Path(args.sb_key).resolve(), Path(args.sb_cert).resolve())
        for path in (key.key, key.cert):
            if not path.exists():
                raise signing.SigningError(f"{path} does not exist")
    else:
        key = signing.ensure_key(Path(args.keys_dir))
    if args.profile == "debug" and not args.sign_debug:
        raise signing.SigningError(
            f"refusing to sign a debug image (a root shell on the console) with {key.cert}: build it with "
            "SECURE_BOOT=off, or say SIGN_DEBUG_WITH_THIS_KEY=yes if that key is not your fleet's")
    return key


def cmd_bench_rebuild(args: argparse.Namespace) -> int:
    """Time a rebuild after a change to one file under python/ (the cache warmed first)."""
    repo = Path(args.repo).resolve()
    base = ["image", "--repo", str(repo), "--build-dir", args.build_dir, "--cache-dir", args.cache_dir]
    print("bench: warming the caches with one build", file=sys.stderr)
    if main(base) != 0:
        return 1
    touched = repo / "python/appliance/init/main.py"
    touched.touch()
    started = time.monotonic()
    if main(base) != 0:
        return 1
    took = time.monotonic() - started
    print(f"bench: rebuild after touching {touched.relative_to(repo)}: {took:.1f} s "
          f"on {os.cpu_count()} CPUs (target: <= 60 s)")
    return 0


def build_kernel(repo: Path, sources: Path, cache_dir: Path) -> kernel.Built | None:
    """The appliance kernel, from the cache or built now; None (said why) if it failed."""
    try:
        return kernel.build(repo, sources, cache_dir.resolve() / "kernel",
                            lambda line: print(f"build: {line}", file=sys.stderr, flush=True))
    except kernel.KernelError as e:
        print(f"build: error: {e}", file=sys.stderr)
        return None


def cmd_kernel(args: argparse.Namespace) -> int:
    """``make kernel``: the appliance kernel alone, into the cache (KERNEL=appliance takes it from there)."""
    repo = Path(args.repo).resolve()
    try:
        mirrors = mirror.host_mirrors(args.mirror or None, args.security_mirror)
    except mirror.MirrorError as e:
        print(f"kernel: error: {e}", file=sys.stderr)
        return 2
    sources = render.write_sources(repo, mirrors, "off", Path(args.build_dir).resolve() / "kernel-sources")
    built = build_kernel(repo, sources, Path(args.cache_dir))
    if built is None:
        return 1
    print(f"{built.image} ({built.release}, {kernel.SOURCE_PACKAGE} {built.version})")
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    efi = Path(args.efi)
    if not efi.exists():
        print(f"size: {efi} not found; run `make image` first", file=sys.stderr)
        return 2
    print(inspect.size_report(efi, top=args.top).full())
    return 0


def cmd_check_core(args: argparse.Namespace) -> int:
    try:
        entry = render.check_core(Path(args.core))
    except render.CoreError as e:
        print(f"build: error: {e}", file=sys.stderr)
        return 2
    print(f"core ok: {entry}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.builder")
    sub = p.add_subparsers(dest="command", required=True)
    img = sub.add_parser("image", help="build build/appliance.raw and build/appliance.efi")
    img.add_argument("--repo", default=".")
    img.add_argument("--build-dir", default="build")
    img.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/appliance-image"))
    img.add_argument("--core", default=os.environ.get("CORE") or None)
    img.add_argument("--profile", default="default", choices=["default", "debug"])
    img.add_argument("--kernel", default=os.environ.get("KERNEL") or "debian",
                     help="debian: Debian's signed kernel and its modules (the default); appliance: our own, "
                          f"built from {kernel.SOURCE_PACKAGE} with every driver built in (KERNEL=)")
    img.add_argument("--image-version", default=os.environ.get("VERSION") or "",
                     help="the image's version (VERSION=; default: the date and the build id's start)")
    img.add_argument("--hostname", default=initconf.DEFAULT_HOSTNAME,
                     help="the machine's host name (make image HOSTNAME=; default: %(default)s)")
    img.add_argument("--network", choices=["off", "dhcp"], default=os.environ.get("NETWORK") or "off",
                     help="dhcp: NIC drivers, and DHCPv4 on the first wired link (NETWORK=; default off)")
    img.add_argument("--network-wait", type=float, default=float(os.environ.get("NETWORK_WAIT") or 0),
                     help="seconds the core waits for the network at most (NETWORK_WAIT=; default 0: never)")
    img.add_argument("--time-servers", default=os.environ.get("NTP", ""),
                     help="SNTP servers (IPv4, :port if not 123), asked before those DHCP names (NTP=)")
    img.add_argument("--syslog", default=os.environ.get("SYSLOG", ""),
                     help="host:port of a syslog receiver the console's lines go to, RFC 5424 over TCP (SYSLOG=)")
    img.add_argument("--crash-reports", default=os.environ.get("CRASH_REPORTS", ""),
                     help="a Sentry DSN the crash history is sent to (CRASH_REPORTS=; needs NETWORK=dhcp)")
    img.add_argument("--crash-reports-ca", default=os.environ.get("CRASH_REPORTS_CA", ""),
                     help="PEM CA certificates for a private tracker's TLS (CRASH_REPORTS_CA=)")
    img.add_argument("--data-size", default=os.environ.get("DATA_SIZE", "rest"),
                     help="the data partition the first boot makes after the ESP: rest (of the disk), none, "
                          "or a size such as 4G (DATA_SIZE=; default rest)")
    img.add_argument("--update-channel", default=os.environ.get("UPDATE_CHANNEL", ""),
                     help="the URL of an update channel (make publish's directory, served over http or https) "
                          "the machine checks and updates itself from (UPDATE_CHANNEL=; implies NETWORK=dhcp)")
    img.add_argument("--update-interval", type=float,
                     default=float(os.environ.get("UPDATE_INTERVAL") or render.INIT_DEFAULTS.update_interval_seconds),
                     help="seconds between checks, spread by 10%% (UPDATE_INTERVAL=; default 6 hours)")
    img.add_argument("--update-ca", default=os.environ.get("UPDATE_CA", ""),
                     help="PEM CA certificates for the channel's TLS (UPDATE_CA=; default: Debian's CAs)")
    img.add_argument("--channel-keys", default=os.environ.get("CHANNEL_KEYS", ""),
                     help="the channel's keys and root metadata, made once (CHANNEL_KEYS=; default "
                          "~/.config/appliance/channel)")
    img.add_argument("--packages", default=os.environ.get("PACKAGES", ""),
                     help="Debian packages for the core, besides its packages.txt (PACKAGES=)")
    img.add_argument("--mirror", default=os.environ.get("MIRROR", ""))
    # Unset or empty (make exports variables that are not set as empty): the host's own;
    # "none": build without the security archive.
    img.add_argument("--security-mirror", default=os.environ.get("SECURITY_MIRROR") or None)
    img.add_argument("--esp-free-mib", type=int, default=64)
    img.add_argument("--runtime-log-cap", type=int, default=render.INIT_DEFAULTS.runtime_log_cap)
    img.add_argument("--core-memory-max", default="")
    img.add_argument("--history-records", type=int, default=render.INIT_DEFAULTS.history_records)
    img.add_argument("--hw-watchdog-seconds", type=int, default=render.INIT_DEFAULTS.hw_watchdog_seconds)
    img.add_argument("--secure-boot", choices=["off", "direct", "shim"],
                     default=os.environ.get("SECURE_BOOT") or "shim",
                     help="off: unsigned; direct: signed, systemd-boot as BOOTX64.EFI (your keys in db); "
                          "shim: Debian's Microsoft-signed shim first, our key enrolled as a MOK (stock PCs)")
    img.add_argument("--keys-dir", default=os.environ.get("KEYS_DIR") or str(signing.default_keys_dir()))
    img.add_argument("--sb-key", default=os.environ.get("SB_KEY") or "")
    img.add_argument("--sb-cert", default=os.environ.get("SB_CERT") or "")
    img.add_argument("--sign-debug", action="store_true",
                     default=os.environ.get("SIGN_DEBUG_WITH_THIS_KEY", "") in ("yes", "1", "true"))
    img.set_defaults(func=cmd_image)
    br = sub.add_parser("bench-rebuild", help="time a rebuild after changing one file under python/")
    br.add_argument("--repo", default=".")
    br.add_argument("--build-dir", default="build")
    br.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/appliance-image"))
    br.set_defaults(func=cmd_bench_rebuild)
    kn = sub.add_parser("kernel", help="build the appliance kernel (KERNEL=appliance) into the cache")
    kn.add_argument("--repo", default=".")
    kn.add_argument("--build-dir", default="build")
    kn.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/appliance-image"))
    kn.add_argument("--mirror", default=os.environ.get("MIRROR", ""))
    kn.add_argument("--security-mirror", default=os.environ.get("SECURITY_MIRROR") or None)
    kn.set_defaults(func=cmd_kernel)
    sz = sub.add_parser("size", help="print the size breakdown of a UKI")
    sz.add_argument("efi", nargs="?", default="build/appliance.efi")
    sz.add_argument("--top", type=int, default=12)
    sz.set_defaults(func=cmd_size)
    cc = sub.add_parser("check-core", help="check that a core can be built in")
    cc.add_argument("core")
    cc.set_defaults(func=cmd_check_core)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
