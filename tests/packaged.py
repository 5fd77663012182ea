"""The packaged executable: built from this tree with ``pyinstaller.spec``, outside it.

Used by tests/test_packaged.py (once per session) and benchmarks/bench_packaged.py.
The build goes to ``<out_dir>/dist/pocketserver``; PyInstaller's work folder is
``<out_dir>/work`` and is removed afterwards (it is larger than the executable).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# On a loaded 2-core machine the build takes 2 to 3 minutes; the bound is for a hung one.
BUILD_DEADLINE_S = 1800.0


class BuildError(RuntimeError):
    pass


def build_executable(out_dir: Path) -> tuple[Path, float]:
    """Run ``pyinstaller pyinstaller.spec``; return the executable and the build's seconds."""
    dist, work = out_dir / "dist", out_dir / "work"
    cmd = [
        sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
        "--distpath", str(dist), "--workpath", str(work), str(REPO / "pyinstaller.spec"),
    ]
    started = time.monotonic()
    try:
        r = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=BUILD_DEADLINE_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"pyinstaller did not finish within {BUILD_DEADLINE_S:.0f} s") from e
    secs = time.monotonic() - started
    shutil.rmtree(work, ignore_errors=True)
    exe = dist / "pocketserver"
    if r.returncode != 0 or not exe.is_file():
        raise BuildError(
            f"pyinstaller failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
        )
    return exe, secs


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (a one-file executable runs the server in a child of
    its bootloader)."""
    out: list[int] = []
    todo = [pid]
    for _ in range(1000):
        if not todo:
            break
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out
