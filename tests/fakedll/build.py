"""Build the fake ProfitDLL (fake_profitdll.c) with the system C compiler, once per session.

`build_fake(tmpdir)` compiles `cc -shared -fPIC -pthread -O2` into `tmpdir` and returns the path
of the shared library; later calls in the same process return the library already built.
`build_missing_export(tmpdir)` builds the same source without one required export, for the test
that the binding names what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_profitdll.c")
LIBRARY_NAME = "libprofitdll_fake.so"

_built: dict[str, Path] = {}


def compiler() -> str:
    """The C compiler: $CC, else cc, else gcc; fails with a hint when none is installed."""
    for candidate in (os.environ.get("CC"), "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return candidate
    raise RuntimeError("no C compiler found: install gcc (apt-get install gcc) or set CC")


def _compile(output: Path, *defines: str) -> Path:
    command = [
        compiler(),
        "-shared",
        "-fPIC",
        "-pthread",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        *defines,
        "-o",
        str(output),
        str(SOURCE),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"building the fake ProfitDLL failed:\n{' '.join(command)}\n{result.stderr}"
        )
    return output


def build_fake(tmpdir: Path) -> Path:
    """Compile the fake into `tmpdir` (once per process) and return the library's path."""
    cached = _built.get("fake")
    if cached is not None and cached.exists():
        return cached
    Path(tmpdir).mkdir(parents=True, exist_ok=True)
    _built["fake"] = _compile(Path(tmpdir) / LIBRARY_NAME)
    return _built["fake"]


def build_missing_export(tmpdir: Path, export: str = "SetTradeCallbackV2") -> Path:
    """A second library identical to the fake except that `export` is not exported."""
    key = f"missing:{export}"
    cached = _built.get(key)
    if cached is not None and cached.exists():
        return cached
    Path(tmpdir).mkdir(parents=True, exist_ok=True)
    # A version script hides the one symbol: the library loads, but the vendor's name is absent.
    script = Path(tmpdir) / f"hide_{export}.map"
    script.write_text(f"{{ global: *; local: {export}; }};\n")
    output = Path(tmpdir) / f"libprofitdll_no_{export}.so"
    _built[key] = _compile(output, f"-Wl,--version-script={script}")
    return _built[key]
