"""The container image, without a Docker engine.

The Dockerfile is parsed (dockerfile-parse) and checked against the package: user,
entrypoint, port, labels, stages. Then what the image does is done here: the wheel is
built from exactly the files the build context holds, installed into a clean virtual
environment without pip, and run from / with HOME=/tmp, as the image runs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from dockerfile_parse import DockerfileParser

import exporter
from exporter import config as exporter_config
from tests.helpers import ROOT, free_port, subprocess_env

DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "python3-dev", "libc6-dev")


def instructions() -> list[dict[str, Any]]:
    return [i for i in DockerfileParser(path=str(DOCKERFILE)).structure
            if i["instruction"] != "COMMENT"]


def final_stage() -> list[dict[str, Any]]:
    ins = instructions()
    last_from = max(n for n, i in enumerate(ins) if i["instruction"] == "FROM")
    return ins[last_from:]


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def console_script() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [name] = pyproject["project"]["scripts"]
    return str(name)


# --------------------------------------------------------------------------------------
# The Dockerfile


def test_multi_stage_on_slim_python() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    assert parser.is_multistage
    assert parser.parent_images and all(
        img == "python:3.12-slim" for img in parser.parent_images)
    # The runtime stage takes only the wheels from the builder, nothing else.
    copies = values(final_stage(), "COPY")
    assert copies == ["--from=builder /wheels /wheels"]


def test_runs_as_a_numeric_non_root_user() -> None:
    [user] = values(final_stage(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and uid == "65534"
    assert gid == "" or (gid.isdigit() and int(gid) != 0)


def test_entrypoint_is_the_console_script() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    [entry] = values(final_stage(), "ENTRYPOINT")
    assert yaml.safe_load(entry) == [console_script()]  # exec form, a JSON list
    assert parser.cmd is None or parser.cmd == ""


def test_exposes_the_default_port() -> None:
    port = exporter_config.DEFAULT_LISTEN.rpartition(":")[2]
    assert values(final_stage(), "EXPOSE") == [port]


def test_read_only_root_friendly_environment() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    envs = parser.envs  # of the final stage
    assert envs["PYTHONDONTWRITEBYTECODE"] == "1"
    assert envs["HOME"] == "/tmp"
    assert values(final_stage(), "WORKDIR")[-1] == "/tmp"


def test_no_build_tools_or_caches_in_the_runtime_stage() -> None:
    for run in values(final_stage(), "RUN"):
        assert not any(tool in run for tool in BUILD_TOOLS), run
        assert "apt-get install" not in run, run
        if "pip install" in run:
            assert "--no-cache-dir" in run, run
    assert DockerfileParser(path=str(DOCKERFILE)).envs["PIP_NO_CACHE_DIR"] == "1"


def test_oci_labels() -> None:
    labels = DockerfileParser(path=str(DOCKERFILE)).labels
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.source"] == pyproject["urls"]["Source"]
    assert labels["org.opencontainers.image.version"] == exporter.__version__
    license_ = pyproject["license"]
    assert labels["org.opencontainers.image.licenses"] == (
        license_ if isinstance(license_, str) else license_["text"])


def test_build_context_holds_what_the_build_copies() -> None:
    """.dockerignore keeps only what the builder stage copies (no .venv, .git, caches)."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything is out, then the sources come back in
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied: set[str] = set()
    for ins in instructions():
        if ins["instruction"] == "COPY" and "--from=" not in ins["value"]:
            copied.update(ins["value"].split()[:-1])
    assert copied == allowed
    for src in copied:
        assert (ROOT / src).exists(), src


# --------------------------------------------------------------------------------------
# The installed wheel, as in the image


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel built from the build context only, installed into a clean venv (no pip,
    no project checkout on sys.path) like the image's runtime stage."""
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "context"
    context.mkdir()
    shutil.copy(ROOT / "pyproject.toml", context)
    shutil.copy(ROOT / "README.md", context)
    shutil.copytree(ROOT / "exporter", context / "exporter",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(tmp / "wheels"),
                    str(context)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp / "wheels").glob("*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    yield venv


def image_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = subprocess_env({"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})})
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.e2e
def test_installed_wheel_runs_from_a_clean_venv(image_venv: Path, moto_server: str,
                                                tmp_path: Path) -> None:
    exe = image_venv / "bin" / console_script()
    before = tree(image_venv)

    r = subprocess.run([str(exe), "--version"], cwd="/", env=image_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"iam-key-exporter {exporter.__version__}"
    # The package comes from the venv, not from this checkout.
    r = subprocess.run([str(image_venv / "bin" / "python"), "-c",
                        "import exporter; print(exporter.__file__)"],
                       cwd="/", env=image_env(), capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith(str(image_venv)), r.stdout

    r = subprocess.run([str(exe), "check-config", "--config",
                        str(ROOT / "config" / "exporter.yaml")],
                       cwd="/", env=image_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["listen"] == exporter_config.DEFAULT_LISTEN

    # Serve, as the container's entrypoint does, against the test's fake AWS.
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"aws": {"endpoint_url": moto_server},
                                   "interval_seconds": 60}))
    port = free_port()
    proc = subprocess.Popen([str(exe), "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                            cwd="/", env=image_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            with contextlib.suppress(requests.ConnectionError):
                ready = requests.get(f"http://127.0.0.1:{port}/readyz",
                                     timeout=5).status_code == 200
            if not ready:
                time.sleep(0.2)
        assert ready, f"not ready; exit code {proc.poll()}"
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'iam_exporter_build_info{' in body
        assert "iam_exporter_collection_success{" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == 0, out

    # Nothing was written into the installed tree (no byte-code, no caches): with a
    # read-only root file system the same run only writes to /tmp.
    assert tree(image_venv) == before
    assert not os.path.exists(image_venv / "bin" / "pip")
