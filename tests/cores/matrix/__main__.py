"""The test core: one image for the whole crash matrix.

Each boot it reads its action from the ESP (/esp/appliance-test/action, written by
the harness between boots), removes that file (so the next boot idles unless told
otherwise), says "matrix core: action <name>", and does it. /esp/appliance-test/always
names an action for every boot (crash loops) and is not removed. Without an action
it prints "matrix core: ready" and idles.
"""

import ctypes
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


def main() -> None:
    action = take_action()
    print(f"matrix core: action {action or '(none)'}", flush=True)
    if action == "":
        idle()
    elif action == "exit0":
        sys.exit(0)
    elif action == "exit3":
        sys.exit(3)
    elif action == "raise":
        raise RuntimeError("matrix core: raised on purpose in the main thread")
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
    else:
        print(f"matrix core: unknown action {action!r}", flush=True)
        idle()


main()
