"""The machine's monitor, as a person sees it: QEMU's display read through QMP
(screendump, send-key) and its text through OCR (Debian's tesseract).

The screendump is made readable first: grey, every bright pixel (text, on whatever
background) black and everything else white, twice the size; tesseract reads dark text
on a light page best.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

DISPLAYS = ("VGA", "virtio-vga", "bochs-display", "virtio-gpu-pci")
INK = 100  # luminance above which a pixel is text (white, grey, yellow; not the red or blue bands)


class QmpError(RuntimeError):
    pass


def qmp(sock_path: str | Path, command: str, arguments: dict[str, Any] | None = None,
        timeout: float = 30.0) -> Any:
    """One QMP command on a fresh connection; its ``return``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        f = s.makefile("rwb")

        def reply() -> dict[str, Any]:
            while True:
                line = f.readline()
                if not line:
                    raise QmpError(f"QMP closed the connection during {command}")
                message = json.loads(line)
                if "event" not in message:
                    return message  # type: ignore[no-any-return]

        reply()  # the greeting
        for name, args in (("qmp_capabilities", None), (command, arguments)):
            f.write(json.dumps({"execute": name, **({"arguments": args} if args else {})}).encode() + b"\n")
            f.flush()
            answer = reply()
            if "error" in answer:
                raise QmpError(f"QMP {name}: {answer['error'].get('desc', answer['error'])}")
        return answer.get("return")


def tesseract() -> str:
    """The OCR program, or "" where it is not installed (make deps installs it)."""
    return shutil.which("tesseract") or ""


def read_text(image: Path, work: Path) -> str:
    """The text on a screendump (PNG or PPM), through tesseract."""
    from PIL import Image  # the harness's venv has it (python[dev])

    with Image.open(image) as shot:
        grey = shot.convert("L")
    page = grey.point(lambda v: 0 if v > INK else 255).resize((grey.width * 2, grey.height * 2))
    prepared = work / f"{image.stem}.ocr.png"
    page.save(prepared)
    r = subprocess.run([tesseract() or "tesseract", str(prepared), "stdout", "--psm", "6"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"tesseract failed on {prepared}: {r.stderr.strip()[-400:]}")
    return r.stdout


def send_keys(sock_path: str | Path, *combos: str, pause: float = 0.1) -> None:
    """Keys typed at the machine's keyboard: each combination as QEMU's qcodes joined by
    '-' ("alt-f2", "ret", "shift-a")."""
    for combo in combos:
        qmp(sock_path, "send-key", {"keys": [{"type": "qcode", "data": k} for k in combo.split("-")]})
        time.sleep(pause)


QCODES = {" ": "spc", "\n": "ret", "-": "minus", "=": "equal", "/": "slash", ".": "dot", ",": "comma",
          ";": "semicolon", "'": "apostrophe", "\\": "backslash", "[": "bracket_left", "]": "bracket_right",
          "`": "grave_accent"}
SHIFTED = {"_": "minus", "+": "equal", "?": "slash", ">": "dot", "<": "comma", ":": "semicolon", '"': "apostrophe",
           "|": "backslash", "{": "bracket_left", "}": "bracket_right", "~": "grave_accent", "!": "1", "@": "2",
           "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9", ")": "0"}


def type_text(sock_path: str | Path, text: str) -> None:
    """``text`` typed on a US keyboard, key by key."""
    combos = []
    for c in text:
        if c in QCODES:
            combos.append(QCODES[c])
        elif c in SHIFTED:
            combos.append(f"shift-{SHIFTED[c]}")
        elif c.isupper():
            combos.append(f"shift-{c.lower()}")
        elif c.isalnum():
            combos.append(c)
        else:
            raise ValueError(f"no key for {c!r}")
    send_keys(sock_path, *combos, pause=0.05)
