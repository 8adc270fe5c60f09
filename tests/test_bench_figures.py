"""`make bench`'s arithmetic: milestones from the bench core's line, spreads, the table."""

import pytest

from appliance.bench import figures

LINE = "bench core: ready uptime=4.500 init-exec=1.250 core-fork=2.000 init-rss-kib=10240"


def test_milestones_are_placed_on_the_hosts_time_line() -> None:
    boot = figures.boot_from_line("noise " + LINE + "\r", seen_after_start=10.0)
    # The line came 10 s after QEMU started and says 4.5 s since the kernel started.
    assert boot == figures.Boot(kernel_start=5.5, init_start=6.75, core_started=7.5, core_ready=10.0,
                                init_rss_kib=10240)
    assert boot.init_overhead == 0.75
    assert [boot.milestone(n) for n in figures.MILESTONES] == [5.5, 6.75, 7.5, 10.0]


def test_a_line_without_the_kernels_record_is_refused() -> None:
    with pytest.raises(ValueError, match="Run /init"):
        figures.boot_from_line(LINE.replace("init-exec=1.250", "init-exec=-1.000"), 10.0)
    with pytest.raises(ValueError, match="not a bench core ready line"):
        figures.boot_from_line("systemd[1]: Started something", 10.0)


def test_spread_and_ratio() -> None:
    s = figures.spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.text() == "2.50 s (1.00-10.00)"
    assert figures.spread([]).text() == "n/a"
    assert figures.ratio(figures.spread([3.0]), figures.spread([6.0])) == "0.50"
    assert figures.ratio(figures.spread([3.0]), figures.spread([])) == "n/a"


def test_the_table_compares_ours_with_the_comparator() -> None:
    ours = [figures.boot_from_line(LINE, 10.0), figures.boot_from_line(LINE, 12.0)]
    theirs = [figures.boot_from_line(LINE.replace("core-fork=2.000", "core-fork=4.000"), 20.0)]
    rows = figures.boot_rows(ours, theirs)
    assert rows[3] == ("QEMU start -> core ready", "11.00 s (10.00-12.00)", "20.00 s (20.00-20.00)", "0.55")
    assert rows[4] == ("kernel start -> /init", "1.25 s (1.25-1.25)", "1.25 s (1.25-1.25)", "1.00")
    # Lines from before the bench core said how long the unpacking took: no figure, no ratio.
    assert rows[5] == ("  of which the kernel unpacking the initrd", "n/a", "n/a", "n/a")
    assert rows[6] == ("init start -> core started", "0.75 s (0.75-0.75)", "2.75 s (2.75-2.75)", "0.27")
    assert rows[7][0] == "init's resident memory" and rows[7][1] == "10.0 MiB (10.0-10.0)"
    text = figures.table([("", "ours", "systemd", "ratio"), *rows])
    lines = text.splitlines()
    assert lines[0].split() == ["ours", "systemd", "ratio"] and set(lines[1]) <= {"-", " "}
    assert len({len(line) for line in lines}) == 1  # numbers right-aligned in their columns


def test_the_kernels_part_and_its_unpacking_of_the_initrd() -> None:
    ours = [figures.boot_from_line(LINE + " unpack=0.600", 10.0), figures.boot_from_line(LINE + " unpack=0.800", 11.0)]
    theirs = [figures.boot_from_line(LINE.replace("init-exec=1.250", "init-exec=2.500") + " unpack=2.000", 10.0)]
    assert ours[0].unpack == 0.6 and ours[0].kernel_part == 1.25
    rows = {row[0]: row[1:] for row in figures.boot_rows(ours, theirs)}
    assert rows["kernel start -> /init"] == ("1.25 s (1.25-1.25)", "2.50 s (2.50-2.50)", "0.50")
    assert rows["  of which the kernel unpacking the initrd"] == ("0.70 s (0.60-0.80)", "2.00 s (2.00-2.00)", "0.35")
    # A kernel whose records were not found (-1): the boot counts, the unpacking does not.
    odd = figures.boot_from_line(LINE + " unpack=-1.000", 10.0)
    assert odd.unpack == -1.0
    assert figures.boot_rows([odd], theirs)[5][1] == "n/a"


def test_secure_boot_is_compared_with_the_same_image_booted_with_it_off() -> None:
    off = [figures.boot_from_line(LINE, 10.0), figures.boot_from_line(LINE, 12.0)]
    on = [figures.boot_from_line(LINE, 14.0)]  # shim and the signature check: later, by the same amount
    rows = figures.secure_boot_rows(on, off)
    assert rows[0] == ("ours, same image", "Secure Boot on (ms)", "off", "on/off")
    assert rows[1] == ("QEMU start -> kernel start", "9.50 s (9.50-9.50)", "6.50 s (5.50-7.50)", "1.46")
    assert rows[2] == ("QEMU start -> core ready", "14.00 s (14.00-14.00)", "11.00 s (10.00-12.00)", "1.27")


def test_the_kernels_rows_are_multiples_of_each_boots_firmware_time() -> None:
    from appliance.bench.__main__ import kernel_rows
    from appliance.bench.figures import Boot
    debian = [Boot(5.0, 8.0, 9.0, 12.0, 9000), Boot(4.0, 6.6, 7.4, 10.0, 9000)]  # /init 0.6 x and 0.65 x
    ours = [Boot(5.0, 6.5, 7.5, 8.0, 9000), Boot(4.0, 5.0, 6.0, 6.4, 9000)]  # 0.3 x and 0.25 x
    rows = kernel_rows({"debian": debian, "appliance": ours}, {"debian": 25 * 2**20, "appliance": 18 * 2**20})
    assert rows[0] == ("", "Debian's kernel", "KERNEL=appliance", "target")
    assert rows[2][0] == "kernel start -> /init" and rows[2][3] == "<= 0.4 x"
    assert rows[2][1].startswith("2.80 s = 0.62 x (0.60-0.65)") and rows[2][2].startswith("1.25 s = 0.28 x (0.25-0.30)")
    assert rows[3][0] == "QEMU start -> core ready" and rows[3][2].startswith("7.20 s = 1.60 x (1.60-1.60)")
    assert rows[4][0] == "UKI" and "25.0" in rows[4][1] and "18.0" in rows[4][2]
