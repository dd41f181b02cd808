"""Which pip command can download the BIG-bench sdist.

pip 26.3 refuses any PyPI distribution whose metadata declares a direct-URL dependency, and bigbench 1.0.0
declares one (``bleurt @ file://...``), even under ``pip download --no-deps``. With such a pip we run the
last release without that check straight from its wheel (``python pip-X.whl/pip``, a supported way to run
pip); it uses the same configuration (index, certificates, proxies) as the installed pip.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

FALLBACK_PIP = "26.2.1"
_REJECTS_DIRECT_URL_DEPS = (26, 3)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def pip_command(tools_dir: Path) -> list[str]:
    """``python -m pip`` when the installed pip can download bigbench, else a cached older pip wheel."""
    try:
        installed = metadata.version("pip")
    except metadata.PackageNotFoundError as err:
        raise RuntimeError(
            f"pip is not installed for {sys.executable}; it is needed to fetch BIG-bench"
        ) from err
    if _version(installed) < _REJECTS_DIRECT_URL_DEPS:
        return [sys.executable, "-m", "pip"]
    wheels = sorted(tools_dir.glob(f"pip-{FALLBACK_PIP}-*.whl"))
    if not wheels:
        tools_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               f"pip=={FALLBACK_PIP}", "-d", str(tools_dir)]  # fmt: skip
        subprocess.run(cmd, check=False)
        wheels = sorted(tools_dir.glob(f"pip-{FALLBACK_PIP}-*.whl"))
        if not wheels:
            raise RuntimeError(f"could not fetch pip=={FALLBACK_PIP} (needed because pip {installed} cannot "
                               "download bigbench); pass a local folder of task files instead")  # fmt: skip
    return [sys.executable, str(wheels[-1] / "pip")]
