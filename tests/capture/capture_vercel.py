"""Capture the Vercel AI SDK 6 and 7 in Node (fixtures vercel_ai_v6, vercel_ai_v7).

Not run in CI. Node 20 and npm; each major in its own directory (gitignored), from the repo root:

    mkdir -p .capture-node/v6 && cd .capture-node/v6 && npm init -y && npm install ai@6.0.326 \\
        @ai-sdk/openai@3 @opentelemetry/api @opentelemetry/sdk-trace-base \\
        @opentelemetry/exporter-trace-otlp-proto @opentelemetry/resources @opentelemetry/context-async-hooks
    (the same in .capture-node/v7 with ai@7.0.173, @ai-sdk/openai@4 and @ai-sdk/otel@1.0.173: AI SDK 7
    emits spans only through a registered telemetry integration, `registerTelemetry(new OpenTelemetry())`)
    cd tests/capture && ../../.capture-venv/bin/python capture_vercel.py 6    # or 7

The script (capture_vercel.mjs) runs with `node --input-type=module` from the package directory,
so its imports resolve there. Telemetry: `experimental_telemetry: {isEnabled: true, tracer}`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from record import capture

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE.parents[1] / ".capture-node"


def main(major: str) -> None:
    pkg_dir = NODE_DIR / f"v{major}"
    name = f"vercel_ai_v{major}"

    def run(base: str, traces_url: str) -> None:
        env = {**os.environ, "FAKE_BASE": base, "TRACES_URL": traces_url, "SERVICE": f"capture-{name}", "AI_MAJOR": major}
        subprocess.run(["node", "--input-type=module", "-e", (HERE / "capture_vercel.mjs").read_text()],
                       cwd=pkg_dir, env=env, check=True, timeout=120)

    versions = {}
    for pkg in ("ai", "@ai-sdk/openai", "@opentelemetry/sdk-trace-base", "@opentelemetry/exporter-trace-otlp-proto"):
        versions[pkg] = json.loads((pkg_dir / "node_modules" / pkg / "package.json").read_text())["version"]
    versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    capture(name, run, "tests/capture/capture_vercel.py", versions, f"capture-{name}")


if __name__ == "__main__":
    main(sys.argv[1])
