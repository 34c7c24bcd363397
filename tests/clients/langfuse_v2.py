"""The Langfuse Python SDK v2 (`langfuse<3`, the line Dify uses), installed beside the venv.

The venv holds langfuse>=3 for the other tests, so v2 goes to its own directory with
`pip install --target` once (about 30 s; later runs find it) and runs in a subprocess with
PYTHONPATH pointing there. `OTELGATE_LANGFUSE_V2` names an existing install instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SPEC = "langfuse>=2.60,<3"
SCRIPT = Path(__file__).with_name("langfuse_v2_dify.py")


def install() -> Path | str:
    """The directory holding langfuse v2, or why it could not be installed."""
    given = os.environ.get("OTELGATE_LANGFUSE_V2")
    target = Path(given) if given else Path(sys.prefix) / "langfuse-v2"
    marker = target / ".installed"
    if marker.exists() and marker.read_text() == SPEC:
        return target
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                             "--target", str(target), "--upgrade", SPEC],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return f"pip install {SPEC!r} failed: {result.stderr.strip()[-400:]}"
    marker.write_text(SPEC)
    return target


def run(target: Path, host: str, public_key: str, secret_key: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, str(SCRIPT), host, public_key, secret_key], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(target))
