"""The test core: one image for the whole crash matrix.

Each boot it reads its action from the ESP (/esp/appliance-test/action, written by
the harness between boots), removes that file (so the next boot idles unless told
otherwise), says "matrix core: action <name>", and does it. /esp/appliance-test/always
names an action for every boot (crash loops) and is not removed. Without an action
it prints "matrix core: ready" and idles.
"""

import ctypes
import glob
import os
import signal
import subprocess
import sys
import threading
import time

ESP = os.environ.get("APPLIANCE_ESP", "")
ACTION = os.path.join(ESP, "appliance-test", "action") if ESP else ""


def take_action() -> str:
    always = os.path.join(ESP, "appliance-test", "always") if ESP else ""
    if always and os.path.exists(always):
        with open(always) as f:
            return f.read().strip()
    if not ACTION or not os.path.exists(ACTION):
        return ""
    with open(ACTION) as f:
        action = f.read().strip()
    os.unlink(ACTION)
    os.sync()
    return action


def idle() -> None:
    print("matrix core: ready", flush=True)
    while True:
        time.sleep(1)


def deadlock() -> None:
    """Opt in to the software watchdog, ping it a while, then deadlock two threads."""
    dog = int(os.environ["APPLIANCE_WATCHDOG_FD"])
    os.write(dog, b"timeout=4\n")
    for _ in range(3):
        time.sleep(1)
        os.write(dog, b"1")
    first, second = threading.Lock(), threading.Lock()

    def lock_first_then_second() -> None:
        with first:
            time.sleep(0.5)
            with second:
                pass

    def lock_second_then_first() -> None:
        with second:
            time.sleep(0.5)
            with first:
                pass
    threads = [threading.Thread(target=lock_first_then_second, name="deadlock-a"),
               threading.Thread(target=lock_second_then_first, name="deadlock-b")]
    for t in threads:
        t.start()
    print("matrix core: deadlocked", flush=True)
    for t in threads:
        t.join()


def image_version() -> str:
    with open("/usr/lib/os-release") as f:
        for line in f:
            if line.startswith("IMAGE_VERSION="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def action_of_this_version() -> str:
    """/esp/appliance-test/version-action holds "VERSION ACTION" lines: the action of every
    boot of that image version (an update gone wrong), while other versions run on."""
    path = os.path.join(ESP, "appliance-test", "version-action") if ESP else ""
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f.read().splitlines():
                version, _, action = line.strip().partition(" ")
                if version == image_version():
                    return action
    return ""


def hang_the_machine() -> None:
    """Take the only CPU from everything else, the init included: nothing pets the
    hardware watchdog any more, which resets the machine."""
    with open("/proc/sys/kernel/sched_rt_runtime_us", "w") as f:
        f.write("-1")  # no share of the CPU kept back for others
    # Since Linux 6.12 a "fair server" still gives ordinary tasks 5% of each CPU; it is
    # set in debugfs, where 0 turns it off (not under the lockdown of Secure Boot, which
    # keeps debugfs read-only).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"debugfs", b"/sys/kernel/debug", b"debugfs", 0, None) != 0:
        print(f"matrix core: cannot mount debugfs: {os.strerror(ctypes.get_errno())}", flush=True)
    for cpu in glob.glob("/sys/kernel/debug/sched/fair_server/cpu*/runtime"):
        try:
            with open(cpu, "w") as f:
                f.write("0")
        except OSError as e:
            print(f"matrix core: cannot turn the fair server off: {e}", flush=True)
    print("matrix core: hanging the machine", flush=True)
    time.sleep(0.3)  # for the init to pass the line on, while it still can
    # The fair server serves ordinary tasks only: the init's threads become real-time
    # tasks below this one, which then never lets them run.
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))
    for task in os.listdir("/proc/1/task"):
        os.sched_setscheduler(int(task), os.SCHED_FIFO, os.sched_param(1))
    while True:
        pass


def check_the_machine() -> None:
    """Each thing a Python program expects of its machine, tried: one line each, then a count."""
    import locale
    import multiprocessing
    import operator
    import pwd
    import socket
    import ssl
    import zoneinfo

    def loopback() -> str:
        for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_STREAM) as server:
                server.bind((address, 0))
                server.listen()
                with socket.create_connection(server.getsockname()[:2], timeout=5) as client:
                    peer, _ = server.accept()
                    client.sendall(b"x")
                    assert peer.recv(1) == b"x"
                    peer.close()
        return "127.0.0.1 and ::1 answer"

    def hostname() -> str:
        name = socket.gethostname()
        with open("/etc/hostname") as f:
            assert name == f.read().strip(), name
        own = socket.gethostbyname(name)
        assert socket.gethostbyname("localhost") == "127.0.0.1" and own.startswith("127."), own
        return f"{name} is {own}, localhost is 127.0.0.1"

    def user() -> str:
        root = pwd.getpwuid(os.getuid())
        assert root.pw_name == "root" and root.pw_dir == os.environ["HOME"] == "/root", root
        assert os.path.isdir(root.pw_dir) and os.path.expanduser("~") == "/root"
        return f"{root.pw_name}, HOME {root.pw_dir}"

    def environment() -> str:
        assert "/usr/bin" in os.environ["PATH"].split(":"), os.environ["PATH"]
        assert os.environ["LANG"] == "C.UTF-8" and locale.getpreferredencoding() == "UTF-8"
        assert sys.getfilesystemencoding() == "utf-8"
        return f"PATH {os.environ['PATH']}, LANG {os.environ['LANG']}"

    def timezone() -> str:
        assert os.environ["TZ"] == "UTC" and time.tzname[0] == "UTC", time.tzname
        utc = zoneinfo.ZoneInfo("UTC")
        assert utc.utcoffset(None).total_seconds() == 0  # type: ignore[union-attr]
        return "TZ UTC, zoneinfo UTC"

    def certificates() -> str:
        paths = ssl.get_default_verify_paths()
        hashed = glob.glob(os.path.join(paths.openssl_capath, "*.0"))
        context = ssl.create_default_context()
        context.load_verify_locations(cafile="/etc/ssl/certs/ca-certificates.crt")
        cas = context.cert_store_stats()["x509_ca"]
        assert len(hashed) > 50 and cas > 50 and context.verify_mode == ssl.CERT_REQUIRED, (len(hashed), cas)
        return f"{len(hashed)} CA certificates in {paths.openssl_capath}"

    def processes() -> str:
        for method in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context(method)
            with ctx.Pool(2) as pool:
                assert pool.map(operator.neg, range(4)) == [0, -1, -2, -3], method
            value = ctx.Value("i", 0)  # a lock: POSIX semaphores in /dev/shm
            with value.get_lock():
                value.value += 1
        return "start methods " + ", ".join(multiprocessing.get_all_start_methods())

    def interpreter() -> str:
        out = subprocess.run([sys.executable, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        return f"{sys.executable} runs: {out}"

    def dependencies() -> str:
        import markupsafe
        from markupsafe import _speedups  # the C extension: a cp313 wheel
        assert markupsafe.escape("<") == "&lt;"
        return f"markupsafe from {os.path.dirname(markupsafe.__file__)}, {os.path.basename(_speedups.__file__)}"

    def file_formats() -> str:
        """The formats a program keeps its state in, each written, synced and read back."""
        import bz2
        import csv
        import dbm
        import gzip
        import json
        import lzma
        import shelve
        import sqlite3
        import tarfile
        import tomllib
        import zipfile
        folder = os.environ.get("APPLIANCE_DATA") or "/tmp"
        base = os.path.join(folder, "matrix-formats")
        with sqlite3.connect(base + ".sqlite") as db:
            db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT)")
            db.execute("INSERT OR REPLACE INTO t VALUES ('a', 'b')")
        with sqlite3.connect(base + ".sqlite") as db:
            assert db.execute("SELECT v FROM t WHERE k = 'a'").fetchone() == ("b",)
        with dbm.open(base + ".dbm", "c") as d:
            d[b"k"] = b"v"
        assert dbm.whichdb(base + ".dbm") == "dbm.sqlite3", dbm.whichdb(base + ".dbm")
        with shelve.open(base + ".shelf") as sh:
            sh["k"] = {"v": [1, 2]}
        with shelve.open(base + ".shelf") as sh:
            assert sh["k"] == {"v": [1, 2]}
        with open(base + ".csv", "w", newline="") as f:
            csv.writer(f).writerow(["a", "b"])
        with open(base + ".csv", newline="") as f:
            assert next(csv.reader(f)) == ["a", "b"]
        assert json.loads(json.dumps({"a": 1})) == {"a": 1} and tomllib.loads("a = 1") == {"a": 1}
        for opener in (gzip.open, bz2.open, lzma.open):
            with opener(base + ".z", "wb") as z:
                z.write(b"x" * 100)
            with opener(base + ".z", "rb") as z:
                assert z.read() == b"x" * 100
        with zipfile.ZipFile(base + ".zip", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a", "b")
        with tarfile.open(base + ".tar.xz", "w:xz") as tf:
            tf.add(base + ".csv", arcname="a.csv")
        with tarfile.open(base + ".tar.xz") as tf:
            assert tf.getnames() == ["a.csv"]
        return f"sqlite3 {sqlite3.sqlite_version}, dbm ({dbm.whichdb(base + '.dbm')}), shelve, csv, json, " \
               f"tomllib, gzip, bz2, lzma, zipfile, tarfile in {folder}"

    checks = [loopback, hostname, user, environment, timezone, certificates, processes, interpreter, dependencies,
              file_formats]
    failed = 0
    for check in checks:
        try:
            print(f"matrix core: machine: {check.__name__}: ok: {check()}", flush=True)
        except Exception as e:  # noqa: BLE001 - each check says what went wrong, then the next one runs
            failed += 1
            print(f"matrix core: machine: {check.__name__}: FAILED: {type(e).__name__}: {e}", flush=True)
    print(f"matrix core: machine: {len(checks)} checks, {failed} failed", flush=True)


def data_commits(limit: int = 0) -> None:
    """The data partition's workload: SQLite transactions and fsynced files without pause,
    each commit's id said once it is durable; after ``limit`` of them (0: never) a clean
    exit, the init's way out. First what the last boots left: its rows counted, their ids
    checked for gaps, the database's integrity checked."""
    import sqlite3
    folder = os.environ.get("APPLIANCE_DATA", "")
    if not folder:
        print("matrix core: data: none", flush=True)
        idle()
    db = sqlite3.connect(os.path.join(folder, "commits.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit is on the disk when it returns
    db.execute("CREATE TABLE IF NOT EXISTS commits (id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
    count, top = db.execute("SELECT count(*), coalesce(max(id), 0) FROM commits").fetchone()
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    print(f"matrix core: data: {count} rows, ids up to {top}, integrity {integrity}", flush=True)
    files = os.path.join(folder, "files")
    os.makedirs(files, exist_ok=True)
    n = top
    while True:
        n += 1
        db.execute("BEGIN")
        db.execute("INSERT INTO commits VALUES (?, ?, ?)", (n, time.time(), os.urandom(200)))
        db.execute("COMMIT")
        path = os.path.join(files, f"{n % 16:02d}")
        with open(path + ".tmp", "wb") as f:  # a file replaced whole: written, synced, renamed
            f.write(f"{n}\n".encode() * 64)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        print(f"matrix core: data committed {n}", flush=True)
        if limit and n - top >= limit:
            db.close()
            print("matrix core: data: done", flush=True)
            sys.exit(0)


def wait_for_the_network() -> dict[str, str]:
    path = os.environ.get("APPLIANCE_NETWORK", "")
    print(f"matrix core: network state file {path or '(none)'}", flush=True)
    state: dict[str, str] = {}
    for _ in range(240):
        with open(path) as f:
            state = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        if state.get("state") == "up":
            break
        time.sleep(0.5)
    return state


def fetch_over_the_network(url: str) -> None:
    """Wait for the init's network (NETWORK=dhcp), say its state, fetch ``url``."""
    import urllib.request
    state = wait_for_the_network()
    print(f"matrix core: network {state.get('state')} {state.get('interface')} {state.get('address')} "
          f"gateway {state.get('gateway')} dns {state.get('dns')}", flush=True)
    with open("/etc/resolv.conf") as f:
        print(f"matrix core: resolv.conf: {' '.join(f.read().split())}", flush=True)
    with urllib.request.urlopen(url, timeout=30) as r:
        print(f"matrix core: fetched {url}: {r.read().decode().strip()}", flush=True)


def stage_update() -> None:
    """Stage /esp/appliance-test/update.efi with appliance.update, as a core would after
    fetching it; the next boot (which tries it) says it is healthy."""
    from appliance import update
    source = os.path.join(ESP, "appliance-test", "update.efi")
    staged = update.stage(source, step=lambda s: print(f"matrix core: staging: {s}", flush=True))
    os.unlink(source)
    with open(ACTION, "w") as f:
        f.write("healthy")
    os.sync()
    print(f"matrix core: staged {staged.version} as generation {staged.generation} ({staged.entry})", flush=True)
    sys.exit(0)


def kiosk(seconds: float) -> None:
    """A core with its own user interface: it takes the screen, draws on it, says it is
    healthy (a line the init says after the take, which must not reach the screen), and
    crashes after ``seconds``: the init takes the screen back to show why."""
    from appliance import screen
    tty = screen.take()
    print(f"matrix core: kiosk on {tty or '(no screen)'}", flush=True)
    if tty:
        with open(tty, "w") as f:
            f.write("\033[H\033[2J\033[12;10HKIOSK USER INTERFACE 4711\033[14;10HTOUCH TO START\n")
    from appliance import update
    update.healthy()
    time.sleep(seconds)
    raise RuntimeError("matrix core: the kiosk crashed on purpose")


def raise_from_a_helper(what: str) -> None:
    """A frame of the core's own below <module>, with source lines around it."""
    reason = f"matrix core: raised on purpose, {what}"
    raise LookupError(reason)


def main() -> None:
    print(f"matrix core: image {image_version()}", flush=True)
    print(f"matrix core: clock {time.time():.0f}", flush=True)  # never before the image's build
    action = action_of_this_version() or take_action()
    print(f"matrix core: action {action or '(none)'}", flush=True)
    if action == "":
        idle()
    elif action == "exit0":
        sys.exit(0)
    elif action == "exit3":
        sys.exit(3)
    elif action == "raise":
        raise RuntimeError("matrix core: raised on purpose in the main thread")
    elif action.startswith("raise-after "):  # a crash loop with some life in it
        time.sleep(float(action.split()[1]))
        raise_from_a_helper(f"token {os.urandom(4).hex()}")
    elif action == "thread":
        def worker() -> None:
            raise ValueError("matrix core: raised on purpose in a worker thread")
        threading.Thread(target=worker, name="matrix-worker").start()
        time.sleep(30)
    elif action == "segv":
        threading.Thread(target=time.sleep, args=(30,), name="bystander", daemon=True).start()
        time.sleep(0.1)
        ctypes.string_at(0)
    elif action == "abort":
        os.abort()
    elif action == "fatal":
        # A "Fatal Python error" raised by the interpreter itself.
        ctypes.pythonapi.Py_FatalError(b"matrix core: fatal error on purpose")
    elif action == "oswrite":
        os.write(2, b"matrix core: last words written straight to fd 2\n")
        os._exit(7)
    elif action == "sigkill":
        # Killed from outside: another process sends SIGKILL.
        subprocess.Popen([sys.executable, "-c",
                          f"import os, time; time.sleep(1); os.kill({os.getpid()}, 9)"])
        print("matrix core: waiting to be killed", flush=True)
        idle()
    elif action == "oom":
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    elif action == "ignore-term":
        # Ask PID 1 to shut down (as Ctrl-Alt-Del or a power button would), then refuse.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("matrix core: ignoring SIGTERM", flush=True)
        os.kill(1, signal.SIGTERM)
        idle()
    elif action == "flood":
        n = 0
        while True:
            n += 1
            sys.stderr.write(f"matrix core: flood line {n:08d}\n")
    elif action == "soak":
        # make soak: stderr flooded for a moment (runtime-log writes), then a crash or a
        # requested restart at random, so records rotate and the back-off counter moves.
        print("matrix core: soak", flush=True)
        for n in range(1, 2001):
            sys.stderr.write(f"matrix core: soak line {n:06d}\n")
            if n % 200 == 0:
                time.sleep(0.05)
        if int.from_bytes(os.urandom(1), "big") % 2:
            raise RuntimeError("matrix core: soak crash")
        sys.exit(0)
    elif action.startswith("panic "):
        # A kernel panic with a line of ours just before it in the kernel's log.
        token = action.split(" ", 1)[1]
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"matrix core: about to panic the kernel, token {token}\n")
        with open("/proc/sysrq-trigger", "w") as trigger:
            trigger.write("c")
        idle()
    elif action == "deadlock":
        deadlock()
    elif action == "hang":
        hang_the_machine()
    elif action == "library-crash":
        import json

        import markupsafe

        def fill(fields: dict[str, str]) -> markupsafe.Markup:
            return markupsafe.Markup("%s and %s") % (fields["one"],)  # raises inside markupsafe

        print("matrix core: crashing in a library", flush=True)
        # Through the standard library (json, from the image's zip archive) into a dependency:
        # every frame of both has its source line.
        json.loads('{"one": "1"}', object_hook=fill)
    elif action == "data" or action.startswith("data "):  # data [N]: N commits, then a clean exit
        data_commits(int(action.split()[1]) if " " in action else 0)
    elif action == "clock-after-network":  # the init sets the clock before it says the network is up
        wait_for_the_network()
        print(f"matrix core: clock after the network {time.time():.3f}", flush=True)
        idle()
    elif action.startswith("net-fetch "):
        fetch_over_the_network(action.split(" ", 1)[1])
        idle()
    elif action == "machine":
        check_the_machine()
        idle()
    elif action == "stage":
        stage_update()
    elif action.startswith("channel "):  # a fleet's core may point the machine at another channel
        with open(os.path.join(ESP, "appliance", "update-channel.txt"), "w") as f:
            f.write(f"url = {action.split(' ', 1)[1]}\n")
        print(f"matrix core: update channel now {action.split(' ', 1)[1]}", flush=True)
        from appliance import update
        update.healthy()
        idle()
    elif action.startswith("kiosk "):
        kiosk(float(action.split()[1]))
    elif action == "healthy":
        from appliance import update
        update.healthy()
        idle()
    else:
        print(f"matrix core: unknown action {action!r}", flush=True)
        idle()


main()
