"""The demo core: what runs when `make image` is given no CORE=.

It says hello, shows it can see the ESP, then ticks once a second. Replace it with
your own program: `make image CORE=path/to/core.py` (or a directory with __main__.py).
Whatever it prints to stderr as it dies is kept on the ESP and shown at the next boot.
"""

import os
import sys
import time

uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
print(f"demo core: hello from pid {os.getpid()}, Python {sys.version.split()[0]}, "
      f"first line at {uptime:.3f} s since boot", flush=True)
esp = os.environ.get("APPLIANCE_ESP", "")
print(f"demo core: persistent storage at {esp or '(none: persistence is off)'}", flush=True)
print("demo core: ready", flush=True)
n = 0
while True:
    time.sleep(1)
    n += 1
    if n % 60 == 0:
        print(f"demo core: up {n} s", flush=True)
