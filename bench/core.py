"""The bench core: the same program in our image and in the systemd comparator.

It prints one line with the boot milestones it can read from inside the machine,
all in seconds since the kernel started (CLOCK_BOOTTIME):

    bench core: ready uptime=<now> init-exec=<kernel ran /init> core-fork=<this process began>
                init-rss-kib=<PID 1's resident memory> unpack=<seconds the kernel took to unpack the initrd>

With the file bench-crash on the ESP (ours only: the comparator has no persistent
storage), it removes it and crashes instead, for the crash-turnaround figure.
"""

import os
import time

now = time.clock_gettime(time.CLOCK_BOOTTIME)


# The kernel's records of its boot whose times the bench reports (-1 where absent).
MARKS = {"init": b"Run /init as init process", "unpack start": b"Trying to unpack rootfs image as initramfs",
         "unpack end": b"Freeing initrd memory"}


def kernel_marks() -> dict[str, float]:
    """When the kernel logged each of MARKS, from its records in /dev/kmsg."""
    found = dict.fromkeys(MARKS, -1.0)
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return found
    try:
        for _ in range(20000):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:
                continue
            head, _, text = record.partition(b";")
            for name, start in MARKS.items():
                if found[name] < 0 and text.startswith(start):
                    found[name] = int(head.split(b",")[2]) / 1e6
            if found["init"] >= 0:
                break
    finally:
        os.close(fd)
    return found


def core_fork() -> float:
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
    return start_ticks / os.sysconf("SC_CLK_TCK")


def init_rss_kib() -> int:
    with open("/proc/1/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


esp = os.environ.get("APPLIANCE_ESP", "")
crash = os.path.join(esp, "bench-crash") if esp else ""
if crash and os.path.exists(crash):
    os.unlink(crash)
    os.sync()
    print("bench core: crashing now", flush=True)
    raise RuntimeError("bench core: crash for the turnaround figure")
marks = kernel_marks()
unpack = marks["unpack end"] - marks["unpack start"] if min(marks.values()) >= 0 else -1.0
print(f"bench core: ready uptime={now:.3f} init-exec={marks['init']:.3f} core-fork={core_fork():.3f} "
      f"init-rss-kib={init_rss_kib()} unpack={unpack:.3f}", flush=True)
while True:
    time.sleep(60)
