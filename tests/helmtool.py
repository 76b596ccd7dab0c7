"""The helm binary for tests: the pinned one fetched by .ci/install-helm, else PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT, require_binary

TOOLS_BIN = ROOT / ".cache" / "tools" / "bin"
CHART = ROOT / "deploy" / "helm" / "iam-key-exporter"
MONITORING_API = "monitoring.coreos.com/v1"


def helm_binary() -> str:
    """Path of helm; missing helm fails under CI=true and skips elsewhere."""
    local = TOOLS_BIN / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return require_binary("helm")


def helm(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache",
           "HELM_CONFIG_HOME": "/tmp/helm-config", "HELM_DATA_HOME": "/tmp/helm-data"}
    r = subprocess.run([helm_binary(), *map(str, args)], capture_output=True, text=True,
                       timeout=60, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r


def template(*args: str | Path, release: str = "rel") -> list[dict[str, Any]]:
    """`helm template` of the chart; the rendered objects (empty documents dropped)."""
    r = helm("template", release, CHART, "--namespace", "monitoring", *args, check=True)
    return [d for d in yaml.safe_load_all(r.stdout) if d]
