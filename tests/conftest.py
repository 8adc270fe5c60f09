"""Shared fixtures: the repository, the built images, and the QEMU tier's skip rule."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))

from tests.helpers import MatrixMachine, matrix_machine  # noqa: E402 - after the path

BUILD = REPO / "build"
TEST_LOGS = BUILD / "test-logs"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def _need(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how} (make test does it first)")
    return path


@pytest.fixture(scope="session")
def built_efi() -> Path:
    return _need(BUILD / "appliance.efi", "run `make image`")


@pytest.fixture(scope="session")
def built_raw() -> Path:
    return _need(BUILD / "appliance.raw", "run `make image`")


@pytest.fixture(scope="session")
def test_raw() -> Path:
    return _need(BUILD / "test/appliance.raw", "run `make test-image`")


@pytest.fixture(scope="session")
def test_v2_efi() -> Path:
    """The test image's UKI built again as version test-v2: an update to stage."""
    return _need(BUILD / "test-v2/appliance.efi", "run `make test-image`")


@pytest.fixture(scope="session")
def test_debug_raw() -> Path:
    """The test image built with PROFILE=debug: root shells on the serial console and tty2."""
    return _need(BUILD / "test-debug/appliance.raw", "run `make test-image`")


@pytest.fixture(scope="session")
def test_kernel_raw() -> Path:
    """The test image built with KERNEL=appliance: our own kernel, every driver built in."""
    return _need(BUILD / "test-kernel/appliance.raw", "run `make test-image`")


@pytest.fixture(scope="session")
def test_net_raw() -> Path:
    """The test image built with NETWORK=dhcp."""
    return _need(BUILD / "test-net/appliance.raw", "run `make test-image`")


@pytest.fixture(scope="session")
def test_net_versions() -> tuple[Path, Path, Path]:
    """The test network image's UKIs net-1, net-2 and net-3 (one update channel's releases)."""
    return tuple(_need(BUILD / f"test-net{s}/appliance.efi", "run `make test-image`")  # type: ignore[return-value]
                 for s in ("", "-v2", "-v3"))


@pytest.fixture(scope="session")
def qemu_ready() -> None:
    """Skip, saying why, where QEMU or OVMF is truly absent; nowhere else."""
    from appliance.harness.qemu import FirmwareError, find_ovmf
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    try:
        find_ovmf()
    except FirmwareError as e:
        pytest.skip(str(e))
    if shutil.which("mtype") is None:
        pytest.skip("mtools is not installed (apt-get install mtools)")


@pytest.fixture
def ocr() -> None:
    """Skip, saying why, where the OCR that reads a machine's screen is absent."""
    from appliance.harness import screen
    if not screen.tesseract():
        pytest.skip("tesseract is not installed (apt-get install tesseract-ocr; make deps does it)")


@pytest.fixture
def log_dir(request: pytest.FixtureRequest) -> Path:
    d = TEST_LOGS
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def matrix(test_raw: Path, qemu_ready: None, tmp_path: Path, log_dir: Path) -> MatrixMachine:
    """Machines booting the test image, in this test's folder: ``matrix("name", **Machine's)``."""
    return matrix_machine(test_raw, tmp_path, log_dir)


# Hypothesis: in `make test` a fixed seed and a bounded number of examples per property,
# so a run is repeatable and short; FUZZ_EXAMPLES=N (`make fuzz`) runs N random examples.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("test", max_examples=150, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES") or 0) or 1, deadline=None,
                          database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fuzz" if os.environ.get("FUZZ_EXAMPLES") else "test")


# The unit tests first (they are quick), then the QEMU tests, the longest first (measured
# in `make test`'s durations). With `--dist worksteal` (the Makefile's), a worker that runs
# out of tests takes half of what the other has left, so no long test is left to run
# alone at the end while the other worker idles.
LONGEST_FIRST = ("test_qemu_channel.py", "test_power_cut_while_the_core_floods", "test_crash_loop_backs_off",
                 "test_crashes_made_offline", "test_an_update_that_panics_or_hangs", "test_a_kernel_panic_meets",
                 "test_an_update_that_crashes", "test_under_secure_boot", "test_qemu_data.py",
                 "test_power_lost_during_each_try", "test_an_update_staged_from_a_host", "test_qemu_watchdogs.py",
                 "test_qemu_kernel.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if not item.get_closest_marker("qemu"):
            return 0
        for n, name in enumerate(LONGEST_FIRST, 1):
            if name in item.nodeid:
                return n
        return len(LONGEST_FIRST) + 1
    items.sort(key=rank)  # stable: within a rank, the files' own order
