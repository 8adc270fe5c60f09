"""The init's start is on every boot's path: keep slow imports off it (/init to the core
should take about a second under TCG, and Python's imports were half of the init's part).

json, re, enum and uuid cost PID 1 about a tenth of a second under TCG; the init reads
its files without them (kvfile, sigs, GUIDs as text). typing stays (NamedTuple): on the
image's Python it brings none of them, on older ones (3.11) it imports re and enum itself,
so what typing alone loads is not held against the init."""

import subprocess
import sys
from pathlib import Path

# socket: socket.py imports enum (typing on 3.11 would hide that); the network step imports it when asked.
SLOW = ("enum", "json", "re", "uuid", "dataclasses", "inspect", "subprocess", "traceback", "signal", "socket",
        "threading")
PYTHON_DIR = Path(__file__).resolve().parents[1] / "python"


def loaded_by(statement: str) -> set[str]:
    probe = (f"import sys; sys.path.insert(0, {str(PYTHON_DIR)!r}); {statement}; "
             f"print(' '.join(m for m in {SLOW!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-B", "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_init_imports_nothing_slow() -> None:
    assert loaded_by("import appliance.init.main") - loaded_by("import typing") == set()


def test_the_probe_sees_a_slow_import() -> None:
    assert loaded_by("import appliance.init.main, json") - loaded_by("import typing") == {"json"}
