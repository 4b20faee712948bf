"""Fixtures for kubectl compatibility tests: a real platform in a thread, and real kubectl binaries.

The machine's ``kubectl`` is the Google Cloud SDK dispatcher; next to the real binary lie versioned ones
(``kubectl.1.28`` ... ``kubectl.1.33``), which is what these tests run, one parametrization per version.
Every test gets its own ``--cache-dir`` and ``HOME`` (so discovery and OpenAPI caches never leak between
tests) and its own namespace on a platform shared by the module.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from kubevisor.testing.cluster import PlatformThread, platform_thread
from kubevisor.testing.kinds import registry_with_test_kinds

KUBECTL_VERSIONS = ("1.28", "1.29", "1.30", "1.31", "1.32", "1.33")
DEFAULT_TIMEOUT = 60.0
T = TypeVar("T")


def kubectl_dir() -> Path | None:
    """The folder of the real kubectl binary (the one on PATH may be a dispatcher symlink)."""
    found = shutil.which("kubectl")
    return Path(os.path.realpath(found)).parent if found else None


def kubectl_binary(version: str) -> Path | None:
    folder = kubectl_dir()
    if folder is None:
        return None
    binary = folder / f"kubectl.{version}"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class KubectlError(AssertionError):
    """A kubectl run that was expected to succeed and did not."""


@dataclass(frozen=True)
class Kubectl:
    """One kubectl version pointed at the platform, with a private cache dir and HOME."""

    version: str
    binary: Path
    kubeconfig: Path
    cache_dir: Path
    home: Path

    @property
    def minor(self) -> int:
        return int(self.version.split(".")[1])

    @property
    def validate_flags(self) -> tuple[str, ...]:
        """kubectl 1.28 validates with OpenAPI v2 in protobuf, which kubevisor does not serve (documented)."""
        return ("--validate=false",) if self.minor < 29 else ()

    def with_kubeconfig(self, kubeconfig: Path) -> Kubectl:
        return Kubectl(self.version, self.binary, kubeconfig, self.cache_dir, self.home)

    def argv(self, *args: str) -> list[str]:
        return [
            str(self.binary),
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.cache_dir),
            *args,
        ]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["HOME"] = str(self.home)
        env.update(extra or {})
        return env

    def run(
        self,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl to completion; with ``check``, a non-zero exit fails the test with its output."""
        result = subprocess.run(
            self.argv(*args),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(env),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"kubectl {self.version} {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return yaml.safe_load(self.run(*args, "-o", "json").stdout)

    def background(self, *args: str, env: dict[str, str] | None = None) -> Background:
        proc = subprocess.Popen(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
        )
        return Background(proc)


@dataclass
class Background:
    """A long-running kubectl (``get -w``, ``wait``, ``delete``) whose stdout lines are read as they come."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    _stderr: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stdout_reader = threading.Thread(target=self._read, daemon=True)
        self._stderr_reader.start()
        self._stdout_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def wait_until_watching(self, timeout: float = 30.0) -> None:
        """Wait until kubectl (run with ``-v=6``) has an open watch: its log shows a 200 to ``watch=true``."""

        def watching() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kubectl exited ({self.proc.returncode}) before watching: {self.stderr()}"
                )
            return any("watch=true" in line and "200 OK" in line for line in list(self._stderr))

        wait_until(watching, timeout, "kubectl to open its watch")

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout}s; got {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"kubectl exited ({self.proc.wait()}) without a matching line; got {self.seen}; "
                    f"stderr: {self.stderr()}"
                )
            self.seen.append(line)
            if predicate(line):
                return line

    def finish(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str, str]:
        """Wait for exit: (returncode, all stdout, stderr)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"kubectl still running after {timeout}s; stdout so far: {self.seen}"
            ) from None
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code, "\n".join(self.seen), self.stderr()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        """Its stderr, complete once it has exited."""
        if self.proc.poll() is not None:
            self._stderr_reader.join(timeout=10)
        return "".join(self._stderr)

    def kill(self) -> None:
        """Kill it if still running, and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._stdout_reader.join(timeout=10)
        self._stderr_reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def patch_content_types(verbose_stderr: str) -> list[str]:
    """Content-Types of the PATCH requests in kubectl ``-v=7`` output (1.28 and 1.30+ log formats)."""
    types: list[str] = []
    pending = False
    for line in verbose_stderr.splitlines():
        if re.search(r'(\] PATCH https://|verb="PATCH" url=.*headers=<)', line):
            pending = True
        elif pending and "Content-Type:" in line:
            types.append(line.split("Content-Type:", 1)[1].strip())
            pending = False
    return types


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformThread]:
    """The API server under test; controllers off, since nothing kubectl does here needs them."""
    data = tmp_path_factory.mktemp("platform")
    with platform_thread(data, registry=registry_with_test_kinds(), controllers=False) as plat:
        yield plat


@pytest.fixture(scope="module")
def api(platform: PlatformThread) -> Iterator[httpx.Client]:
    """An admin HTTP client, to set up and check state independently of kubectl."""
    pki = platform.platform.pki
    assert pki is not None
    with httpx.Client(base_url=platform.url, verify=pki.client_ssl_context(), timeout=30) as client:
        yield client


@pytest.fixture(params=KUBECTL_VERSIONS)
def kubectl(request: pytest.FixtureRequest, platform: PlatformThread, tmp_path: Path) -> Kubectl:
    version: str = request.param
    binary = kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl.{version} not found next to {shutil.which('kubectl')}")
    home = tmp_path / "home"
    home.mkdir()
    return Kubectl(version, binary, platform.kubeconfig, tmp_path / "kube-cache", home)


_names = itertools.count(1)


@pytest.fixture
def namespace(kubectl: Kubectl, api: httpx.Client, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for one test (the platform is shared by the module)."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.originalname.removeprefix("test_").lower())
    name = f"{base[:40].strip('-')}-{kubectl.minor}-{next(_names)}"
    r = api.post(
        "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert r.status_code == 201, r.text
    return name
