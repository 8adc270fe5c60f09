"""Every parser of bytes nobody vouches for is total and bounded (Hypothesis).

Disks attached at boot, the files the previous boot left on the ESP, the firmware's
variables, pstore and the kernel command line: whatever the bytes, each parser takes
bounded memory and reads, and raises only its documented error. `make test` runs a
fixed seed and a bounded number of examples; `make fuzz` (FUZZ_EXAMPLES=N) runs more.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import efivars as efi
from appliance import initconf as config
from appliance.esp import backoff, gpt, history, kvfile, lastboot, layout, records
from appliance.harness import baddisks
from appliance.init import bootdev, initfailure, pstore, runtimelog, watchdog
from appliance.init import findesp as esp
from tests.helpers import esp_folder, on_esp

pytestmark = pytest.mark.fuzz
MAX_GPT_READ = 2 * (4096 + gpt.MAX_TABLE_BYTES)  # two header sectors (at most 4 KiB) and two tables


class CountingDisk(io.BytesIO):
    """A disk in memory that counts what is read from it."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        super().__init__(data)
        self.read_bytes = 0
        self.size = size

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self.read_bytes += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == os.SEEK_END and self.size is not None:
            super().seek(0, os.SEEK_END)
            return self.size  # a big disk whose sectors past the data read as nothing
        return super().seek(offset, whence)


def read_gpt(disk: CountingDisk, sector: int = 512) -> list[gpt.Partition] | None:
    try:
        parts = gpt.read_table(disk, sector)
    except gpt.GPTError:
        parts = None
    assert disk.read_bytes <= MAX_GPT_READ
    return parts


def disk_with(header: bytes, table: bytes = b"", table_lba: int = 2) -> bytes:
    data = bytearray(512 * 2)
    data[512:1024] = header
    if table:
        data[table_lba * 512:] = b""
        data.extend(bytes(table_lba * 512 - len(data)))
        data.extend(table)
    return bytes(data)


@given(st.binary(max_size=8192), st.sampled_from(gpt.SECTOR_SIZES))
def test_gpt_any_bytes(data: bytes, sector: int) -> None:
    read_gpt(CountingDisk(data), sector)


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@given(entries_lba=st.one_of(st.integers(0, 64), u64), count=st.one_of(st.integers(0, 256), u32),
       entry_size=st.one_of(st.sampled_from([0, 64, 128, 256, 129, 1 << 28]), u32),
       first=st.one_of(st.integers(0, 100), u64), last=st.one_of(st.integers(0, 5000), u64),
       my_lba=st.sampled_from([1, 1, 1, 0, 2, 2**64 - 1]), disk_size=st.integers(0, 1 << 40),
       header_size=st.sampled_from([92, 92, 0, 91, 512, 513, 2**32 - 1]))
def test_gpt_header_with_a_valid_checksum_and_any_fields(entries_lba: int, count: int, entry_size: int, first: int,
                                                        last: int, my_lba: int, disk_size: int,
                                                        header_size: int) -> None:
    """The MemoryError of a second disk: fields of any size behind a checksum that holds."""
    head = baddisks.header(entries_lba=entries_lba, count=count, entry_size=entry_size, first_usable=first,
                           last_usable=last, my_lba=my_lba, header_size=min(header_size, 512))
    disk = CountingDisk(disk_with(head, bytes(16384)), size=disk_size)
    parts = read_gpt(disk)
    if parts is not None:
        assert disk_size >= (entries_lba * 512 + count * entry_size)
        assert count * entry_size <= gpt.MAX_TABLE_BYTES


entries = st.lists(st.tuples(st.sampled_from([gpt.ESP_TYPE, str(uuid.UUID(int=1)), str(uuid.UUID(int=0))]),
                             st.uuids().map(str), u64, u64, st.text(max_size=40)), max_size=8)


@given(entries, st.integers(1, 4).map(lambda n: 64 << n), st.binary(max_size=64), st.integers(0, 16383))
def test_gpt_entries_with_valid_checksums(parts: list[tuple[str, str, int, int, str]], entry_size: int,
                                          flip: bytes, at: int) -> None:
    """Any entries (and a table mutated after the fact, checksum recomputed): what comes
    back lies within the usable area and is numbered within the table."""
    raw = [baddisks.entry(t, g, a, b, name) for t, g, a, b, name in parts]
    table = bytearray(baddisks.table(raw, 128, entry_size))
    table[at % len(table):at % len(table) + len(flip)] = flip
    table = table[:128 * entry_size]
    head = baddisks.header(entries_lba=2, count=128, entry_size=entry_size, table=bytes(table),
                           first_usable=34, last_usable=1 << 40)
    found = read_gpt(CountingDisk(disk_with(head, bytes(table)), size=512 << 41))
    assert found is not None
    for p in found:
        assert 1 <= p.number <= 128 and 34 <= p.first_lba <= p.last_lba <= 1 << 40
        assert gpt.parse_guid(p.type_guid) == p.type_guid and gpt.parse_guid(p.unique_guid) == p.unique_guid


def test_gpt_table_checksum_is_checked() -> None:
    one = baddisks.table([baddisks.entry(gpt.ESP_TYPE, str(uuid.uuid4()), 2048, 4095)])
    head = baddisks.header(table=one, table_crc=zlib.crc32(one) ^ 1)
    with pytest.raises(gpt.GPTError, match="entry table checksum"):
        gpt.read_table(CountingDisk(disk_with(head, one), size=1 << 20))


def test_the_two_hostile_disks_of_the_qemu_tests(tmp_path: Path) -> None:
    with pytest.raises(gpt.GPTError, match="implausible GPT entry size"):
        gpt.read_partitions(str(baddisks.absurd_entry_table(tmp_path / "absurd.raw")))
    with pytest.raises(gpt.GPTError, match="runs past the disk's end"):
        gpt.read_partitions(str(baddisks.table_past_the_end(tmp_path / "past.raw")))


@given(st.binary(max_size=2048))
def test_records_decode_anything(data: bytes) -> None:
    rec = records.decode(data)
    assert isinstance(rec.problem, str)
    problem = records.check_length(data[:records.MAX_HEADER], len(data))
    assert problem == "" or not rec.ok  # the cheap check never fails a whole record
    if problem.startswith("torn"):
        assert rec.problem.startswith("torn")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
       st.dictionaries(st.text(alphabet="abcdefghij-", min_size=1, max_size=10), st.text(max_size=30), max_size=4),
       st.binary(max_size=512), st.data())
def test_records_round_trip_and_any_cut_is_seen(kind: str, meta: dict[str, str], payload: bytes,
                                                data: st.DataObject) -> None:
    whole = records.encode(kind, payload, meta)
    rec = records.decode(whole)
    assert rec.ok and rec.payload == payload and rec.kind == kind
    assert records.check_length(whole[:records.MAX_HEADER], len(whole)) == ""
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert not records.decode(whole[:cut]).ok
    assert records.check_length(whole[:cut][:records.MAX_HEADER], cut) != ""


@given(st.binary(max_size=1024))
def test_kvfile_parse_raises_only_valueerror(data: bytes) -> None:
    try:
        out = kvfile.parse(data)
    except ValueError:
        return
    assert all("=" not in k and k == k.strip() and "\n" not in v for k, v in out.items())


@given(st.dictionaries(st.text(alphabet="abcdefghijklmnop_-", min_size=1, max_size=12).filter(lambda k: k[0] != "#"),
                       st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40), max_size=5))
def test_kvfile_round_trip(values: dict[str, str]) -> None:
    back = kvfile.parse(kvfile.render(values))
    assert back == {k: " ".join(v.splitlines()).strip() for k, v in values.items()}


@given(st.binary(max_size=6000))
def test_state_files_on_the_esp_never_raise(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    d = tmp_path_factory.mktemp("state")
    for path in (layout.BACKOFF, layout.LAST_BOOT):
        on_esp(d, path).parent.mkdir(exist_ok=True)
        on_esp(d, path).write_bytes(data)
    n, problem = backoff.load(esp_folder(d))
    assert n >= 0 and (n == 0 or not problem)
    state, problem = lastboot.load(esp_folder(d))
    assert state is None or isinstance(state.running, bool)
    lastboot.reason(state)


def test_a_state_file_of_100_mb_is_read_only_at_its_start(tmp_path: Path) -> None:
    big = on_esp(tmp_path, layout.BACKOFF)
    big.parent.mkdir()
    with big.open("wb") as f:
        f.write(b"failures = 3\n")
        f.truncate(100 << 20)
    n, problem = backoff.load(esp_folder(tmp_path))
    assert n == 0 and "unreadable" in problem  # 4 KiB read: the NULs are not a count
    big.write_bytes(b"failures = 2\n#" + b"#" * (100 << 20))
    n, problem = backoff.load(esp_folder(tmp_path))
    assert (n, problem) == (2, "")  # the first 4 KiB are a valid file; the rest is never read


@given(st.binary(max_size=8192), st.integers(1024, 4096))
def test_runtime_log_reading_is_bounded(tmp_path_factory: pytest.TempPathFactory, data: bytes, cap: int) -> None:
    path = tmp_path_factory.mktemp("log") / "runtime.log"
    path.write_bytes(data)
    content, size = runtimelog.read_previous(str(path), cap)
    assert size == len(data) and len(content) <= cap + 200
    assert isinstance(runtimelog.how_it_ended(content), str)
    lines = runtimelog.printable_lines(content, limit=1024)
    assert sum(len(line) for line in lines) <= 4 * 1024 + 200
    assert all(c.isprintable() or c == "\t" for line in lines for c in line)


pstore_names = st.sampled_from(["dmesg-efi-1", "dmesg-efi-2", "dmesg-efi_pstore-3", "pmsg-ramoops-0",
                                "console-ramoops-0", "dmesg-efi-170000000000"])


@given(st.dictionaries(pstore_names, st.one_of(st.binary(max_size=300), st.builds(
    lambda r, c, p, b: f"{r}#{c} Part{p}\n".encode() + b, st.sampled_from(["Panic", "Oops", "X", ""]),
    st.integers(0, 10**30), st.integers(0, 10**30), st.binary(max_size=100))), max_size=6))
def test_pstore_collect_anything(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> None:
    d = tmp_path_factory.mktemp("pstore")
    for name, data in files.items():
        (d / name).write_bytes(data)
    dumps, problems = pstore.collect(str(d))
    assert problems == []
    assert sum(len(x.files) for x in dumps) == len(files)  # every file in exactly one dump
    for x in dumps:
        assert len(x.payload) <= sum(len(v) for v in files.values()) + 200


@given(st.binary(max_size=600))
def test_efi_variables_any_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    d = tmp_path_factory.mktemp("efivars")
    (d / f"LoaderDevicePartUUID-{efi.LOADER}").write_bytes(data)
    guid = esp.loader_partuuid(str(d))
    assert guid is None or gpt.parse_guid(guid) == guid
    (d / f"BootCurrent-{efi.GLOBAL}").write_bytes(b"\x06\0\0\0\x01\x00")
    (d / f"Boot0001-{efi.GLOBAL}").write_bytes(data)
    assert bootdev.boot_controller(str(d), str(d / "no-sys")) is None
    path = bootdev.device_path(data)
    assert len(path) <= len(data)
    parsed = bootdev.pci_nodes(data)
    assert parsed is None or len(parsed[1]) <= len(data) // 6
    Path(efi.path(initfailure.NAME, efi.APPLIANCE, str(d))).write_bytes(data)
    text, problem = initfailure.load(str(d))
    assert problem == "" and (text is None or len(text) <= initfailure.MAX_BYTES)
    assert len(initfailure.summary(text or b"")) <= 200


def test_the_init_failure_variable_is_bounded_and_erased(tmp_path: Path) -> None:
    assert initfailure.save("x" * 10 + "y" * 10000 + "\nMemoryError\n", str(tmp_path)) == ""
    raw = Path(efi.path(initfailure.NAME, efi.APPLIANCE, str(tmp_path))).read_bytes()
    assert raw[:4] == struct.pack("<I", 7) and len(raw) == 4 + initfailure.MAX_BYTES
    text, _ = initfailure.load(str(tmp_path))
    assert text is not None and text.endswith(b"MemoryError\n") and text.startswith(b"[...]")
    assert initfailure.summary(text) == "MemoryError"
    assert initfailure.save("again", str(tmp_path)) == ""  # replaces the old one
    assert initfailure.load(str(tmp_path))[0] == b"again"
    assert initfailure.erase(str(tmp_path)) == "" and initfailure.load(str(tmp_path)) == (None, "")


@given(st.text(max_size=300))
def test_kernel_command_line_anything(text: str) -> None:
    switches = config.parse_cmdline(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in switches.items())
    config.Config(switches=switches).hold  # noqa: B018 - it must not raise


@given(st.binary(max_size=2000))
def test_init_config_any_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("conf") / "init.conf"
    path.write_bytes(data)
    cfg, problems = config.load(str(path))
    assert isinstance(cfg, config.Config) and all(isinstance(p, str) for p in problems)


@given(st.text(max_size=2000), st.text(max_size=500), st.integers(-300, 300))
def test_fsck_output_anything(stdout: str, stderr: str, code: int) -> None:
    def run(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], code, stdout, stderr)
    usable, said = esp.fsck("/dev/null", run=run)
    assert usable == (code in (0, 1)) and isinstance(said, str)


@given(st.one_of(st.text(max_size=60), st.builds("{}-{}.rec".format, st.text("0123456789x", max_size=12),
                                                   st.text("abcents-.Z", max_size=12))))
def test_history_names_anything(name: str) -> None:
    parsed = history.parse_name(name)
    if parsed is not None:
        assert parsed.sequence >= 0 and history.parse_name(history.record_name(*parsed)) == parsed
        assert name.endswith(f"-{parsed.kind}{'.' + parsed.mark if parsed.mark else ''}.rec")


@given(st.binary(max_size=400))
def test_watchdog_timeout_word_anything(data: bytes) -> None:
    value = watchdog.timeout_setting(data)
    assert value is None or value >= 0
