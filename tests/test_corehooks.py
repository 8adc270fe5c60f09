"""The hooks installed in the core's interpreter, run in a real child interpreter."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.core.hooks import THREAD_CRASH_STATUS

REPO = Path(__file__).resolve().parent.parent


def run_core(tmp_path: Path, code: str, as_dir: bool = False) -> subprocess.CompletedProcess[str]:
    if as_dir:
        core = tmp_path / "core"
        core.mkdir()
        (core / "__main__.py").write_text(textwrap.dedent(code))
    else:
        core = tmp_path / "core.py"
        core.write_text(textwrap.dedent(code))
    launcher = (f"import sys; sys.path.insert(0, {str(REPO / 'python')!r}); "
                "from appliance.core.hooks import run_core; run_core(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", launcher, str(core)], capture_output=True, text=True, timeout=30)


def test_main_thread_exception_names_itself_and_the_line(tmp_path: Path) -> None:
    r = run_core(tmp_path, "def f():\n    raise ValueError('boom in main')\nf()\n")
    assert r.returncode == 1
    assert "uncaught exception in the main thread:" in r.stderr
    assert "raise ValueError('boom in main')" in r.stderr and "ValueError: boom in main" in r.stderr


def test_thread_exception_crashes_the_core(tmp_path: Path) -> None:
    r = run_core(tmp_path, """
        import threading, time
        def work():
            raise RuntimeError('worker died')
        threading.Thread(target=work, name='worker').start()
        time.sleep(10)
    """)
    assert r.returncode == THREAD_CRASH_STATUS
    assert "uncaught exception in thread 'worker'" in r.stderr and "RuntimeError: worker died" in r.stderr


def test_segfault_in_c_dumps_every_thread(tmp_path: Path) -> None:
    r = run_core(tmp_path, """
        import ctypes, threading, time
        threading.Thread(target=time.sleep, args=(30,), name='sleeper', daemon=True).start()
        time.sleep(0.1)
        ctypes.string_at(0)
    """)
    assert r.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in r.stderr
    assert r.stderr.count("Thread 0x") + r.stderr.count("Current thread 0x") >= 2


def test_abort_is_dumped(tmp_path: Path) -> None:
    r = run_core(tmp_path, "import os\nos.abort()\n")
    assert r.returncode == -signal.SIGABRT and "Fatal Python error: Aborted" in r.stderr


def test_unraisable_is_written_and_the_core_goes_on(tmp_path: Path) -> None:
    r = run_core(tmp_path, """
        class C:
            def __del__(self):
                raise KeyError('in del')
        C()
        print('still running')
    """)
    assert r.returncode == 0 and "still running" in r.stdout
    assert "unraisable exception" in r.stderr and "KeyError: 'in del'" in r.stderr


@pytest.mark.parametrize("as_dir", [False, True])
def test_exit_codes_and_directory_cores(tmp_path: Path, as_dir: bool) -> None:
    r = run_core(tmp_path, "import sys\nprint(__name__)\nsys.exit(3)\n", as_dir=as_dir)
    assert r.returncode == 3 and r.stdout.strip() == "__main__"
