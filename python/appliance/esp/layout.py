"""What lives on the ESP, and where: every path once.

Paths are the ESP's own, from its root with a leading slash, as mtools spells them
(``::/appliance/history``); on the machine the init mounts the ESP at ``MOUNT``, and
``MountedEsp`` joins the two. The init, ``make dumps``, ``make update``, the harness
and the tests all take their paths from here.

    /EFI/BOOT/BOOTX64.EFI            what the firmware starts (systemd-boot, shim or the UKI)
    /EFI/BOOT/grubx64.efi            shim's next stage (SECURE_BOOT=shim): systemd-boot
    /EFI/appliance/<gen>-<ver>.efi   the images (UKIs), one per generation
    /loader/loader.conf              systemd-boot's settings
    /loader/entries/appliance-*.conf one boot entry per image, with its tries in the name
    /appliance/runtime.log           this boot's runtime log (the core's stderr, the init's lines)
    /appliance/history/NNNNNN-<kind>[.sent].rec  the crash history, one record a file (.sent/.refused: reported)
    /appliance/last-boot.txt         how the last boot ended (or that it is running)
    /appliance/backoff.txt           crash-loop counter: failures in a row
    /appliance/updates.log           what became of each update
    /appliance/salvaged/FSCKnnnn.REC fragments fsck.fat salvaged after a power cut (the newest few)
    /appliance/hold                  a switch: do not reboot when the core ends
    /appliance/erase-data            a switch: the next boot erases the data partition, makes a fresh one
    /appliance/crash-reports.txt     where crash reports go, set by the fleet (overrides the build's)
    /appliance/reports-state.txt     what the crash reporter sent today, a tracker's rate limit
    /appliance/update-channel.txt    where updates come from, set by the fleet (overrides the build's)
    /appliance/channel/              the update channel's metadata this machine trusts (TUF)
    /appliance/rolled-back.txt       the versions rolled back here: not tried again
    /appliance/clock.txt             the time this machine last saved: its clock's floor
    /appliance-test/                 the test core's switches (tests/cores/matrix)
"""

from __future__ import annotations

MOUNT = "/esp"  # where the init mounts it; the core finds it in APPLIANCE_ESP
NAME = "APPLIANCE-ESP"  # its GPT partition name, given by the build; the host tools look for it
TYPE_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"  # the EFI System Partition's type GUID

# The boot files (the build writes them; updates add images and entries).
REMOVABLE_PATH = "/EFI/BOOT/BOOTX64.EFI"  # what firmware starts from a disk it has no boot entry for
SHIM_NEXT_STAGE = "/EFI/BOOT/grubx64.efi"
MOKMANAGER = "/EFI/BOOT/mmx64.efi"
IMAGES_DIR = "/EFI/appliance"
LOADER_CONF = "/loader/loader.conf"
ENTRIES_DIR = "/loader/entries"

# The init's directory.
APP_DIR = "/appliance"
RUNTIME_LOG = f"{APP_DIR}/runtime.log"
HISTORY_DIR = f"{APP_DIR}/history"
LAST_BOOT = f"{APP_DIR}/last-boot.txt"  # state, category, cause: see appliance.esp.lastboot
BACKOFF = f"{APP_DIR}/backoff.txt"  # "failures = N": see appliance.esp.backoff
UPDATE_LOG = f"{APP_DIR}/updates.log"
SALVAGED_DIR = f"{APP_DIR}/salvaged"
HOLD = f"{APP_DIR}/hold"
ERASE_DATA = f"{APP_DIR}/erase-data"  # the next boot makes a fresh data file system (appliance.init.data)
CRASH_REPORTS = f"{APP_DIR}/crash-reports.txt"  # "dsn = ..." overrides CRASH_REPORTS= (see docs/crash-reports.md)
UPDATE_CHANNEL = f"{APP_DIR}/update-channel.txt"  # url, interval, ca (url = off): over UPDATE_CHANNEL=
CHANNEL_DIR = f"{APP_DIR}/channel"  # the channel's metadata this machine trusts (TUF's local copies)
ROLLED_BACK = f"{APP_DIR}/rolled-back.txt"  # "VERSION = when" of each update rolled back here: never tried again
CLOCK = f"{APP_DIR}/clock.txt"  # "time = <seconds>": the clock's floor (appliance.init.clock)
REPORTS_STATE = f"{APP_DIR}/reports-state.txt"  # the day's count, a rate limit's end: appliance.report.queue
# Test-only switches (documented in docs/testing.md): each acts once and is removed.
TEST_HANG_INIT = f"{APP_DIR}/test-hang-init"  # the init hangs with the watchdogs armed
TEST_FAIL_INIT = f"{APP_DIR}/test-fail-init"  # the init fails right after mounting the ESP
TEST_DATA_CUT = f"{APP_DIR}/test-data-cut"  # "table" or "made": the init waits there for a power cut
TEST_DIR = "/appliance-test"  # the matrix test core's switches (tests/cores/matrix reads them)
TEST_ACTION = f"{TEST_DIR}/action"  # what the core does at the next boot, once
TEST_ALWAYS = f"{TEST_DIR}/always"  # what it does at every boot
TEST_VERSION_ACTION = f"{TEST_DIR}/version-action"  # "VERSION ACTION": only under that image version
TEST_UPDATE = f"{TEST_DIR}/update.efi"  # an image the core stages with appliance.update

SALVAGED_PREFIX = "FSCK"  # fsck.fat -a names what it salvages FSCKnnnn.REC, in the root
SALVAGED_SUFFIX = ".REC"
SALVAGED_KEEP = 4


def salvaged_name(name: str) -> bool:
    """Whether a file name in the ESP's root is one fsck.fat made of lost clusters."""
    upper = name.upper()
    return upper.startswith(SALVAGED_PREFIX) and upper.endswith(SALVAGED_SUFFIX) and upper[4:-4].isdigit()
