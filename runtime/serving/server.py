"""A local Triton Inference Server for development and tests (`avemo triton-serve`).

The ``nvidia-pytriton`` wheel (Linux x86_64, glibc 2.35+) carries a
``tritonserver`` binary, its Python backend and Python-backend stubs for
Python 3.8-3.13; it has no ONNX Runtime or TensorRT backend, so it serves the
``--backend python`` repository only. Its package metadata pins numpy < 2,
which the rest of avemo does not use, so it is installed with ``--no-deps``:
only the binary is used, never the ``pytriton`` Python package.

Starting it needs three things the wheel leaves to its own launcher: a backend
folder holding the Python backend with the stub for this Python, the wheel's
bundled libraries on ``LD_LIBRARY_PATH``, and this interpreter's libpython
before the system's (the stub links ``libpython3.X.so``; with another build of
the same version, stdlib and site-packages would not match).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from avemo.errors import AvemoError
from avemo.process import children, die_with_parent

WHEEL = "nvidia-pytriton==0.7.0"
INSTALL = f"pip install --no-deps {WHEEL}"
CONTAINER = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 (on Jetson: the <yy.mm>-py3-igpu image)"
STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's server, Python backend, stub and bundled libraries are."""

    server: Path
    python_backend: Path
    stub: Path
    libraries: Path


def find_tritonserver() -> TritonInstall:
    """The tritonserver of the installed nvidia-pytriton wheel; AvemoError saying what to do where there is none."""
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it (its deps are absent)
    if spec is None or not spec.submodule_search_locations:
        raise AvemoError(
            f"no Triton server here: `{INSTALL}` installs one on Linux x86_64 (glibc 2.35+); "
            f"elsewhere (aarch64, Jetson, macOS) serve the repository from NVIDIA's container {CONTAINER}"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        server=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libraries=package.parent / "nvidia_pytriton.libs",
    )
    if not install.server.is_file():
        raise AvemoError(f"{install.server}: missing; reinstall with `{INSTALL}`")
    if not install.stub.is_file():
        raise AvemoError(f"{WHEEL} has no Python-backend stub for Python {version}; use Python 3.8-3.13")
    return install


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stubs_of(server: int) -> dict[int, str]:
    """{pid: model name} of the live Python-backend stubs a tritonserver runs (from /proc; {} elsewhere)."""
    stubs = {}
    for pid in children(server):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if len(args) > 1 and os.fsdecode(args[0]).endswith(STUB):  # args[1]: REPO/MODEL/VERSION/model.py
            stubs[pid] = Path(os.fsdecode(args[1])).parent.parent.name
    return stubs


class TritonServer:
    """Starts tritonserver on a repository, waits until its models are ready, stops it cleanly.

    ``with TritonServer(repo, grpc_port=8001) as server: ...``. Listens on
    ``address`` (loopback by default). HTTP serves the readiness checks; a port
    is chosen when none is given. ``metrics_port``: Prometheus metrics there
    (off when None). The server dies with this process, even killed by SIGKILL
    (parent-death signal). Without ``log_file`` the log goes to a temporary
    file that is deleted after a clean stop and kept (its path said) otherwise.
    """

    def __init__(
        self,
        repository: Path,
        grpc_port: int = 8001,
        http_port: int | None = None,
        address: str = "127.0.0.1",
        log_file: Path | None = None,
        verbose: bool = False,
        metrics_port: int | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise AvemoError(f"{repository}: no such model repository")
        self.install = find_tritonserver()
        self.address = address
        self.grpc_port = grpc_port
        self.http_port = http_port or free_port(address)
        self.verbose = verbose
        self.metrics_port = metrics_port
        self._scratch = tempfile.TemporaryDirectory(prefix="avemo-triton-")
        if log_file:
            self.log_file, self.keep_log = Path(log_file), True
        else:  # outside the scratch folder, so that it can outlive a failure
            handle, name = tempfile.mkstemp(prefix="avemo-tritonserver-", suffix=".log")
            os.close(handle)
            self.log_file, self.keep_log = Path(name), False
        self.process: subprocess.Popen[bytes] | None = None
        self._stubs: dict[int, str] = {}

    @property
    def url(self) -> str:
        """host:port of the gRPC endpoint (what tritonclient.grpc takes)."""
        return f"{self.address}:{self.grpc_port}"

    def _backends(self) -> Path:
        """A backend folder: the wheel's Python backend plus the stub for this Python."""
        folder = Path(self._scratch.name) / "backends" / "python"
        folder.mkdir(parents=True, exist_ok=True)
        for source in [*self.install.python_backend.iterdir(), self.install.stub]:
            if source.is_file() and not (folder / source.name).exists():
                (folder / source.name).symlink_to(source)
        return folder.parent

    def command(self) -> list[str]:
        return [
            str(self.install.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._backends()}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            *(
                [f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}"]
                if self.metrics_port
                else ["--allow-metrics=false"]
            ),
            "--exit-timeout-secs=10",
            f"--log-verbose={1 if self.verbose else 0}",
        ]

    def environment(self) -> dict[str, str]:
        libpython = sysconfig.get_config_var("LIBDIR") or ""
        paths = [libpython, str(self.install.libraries), os.environ.get("LD_LIBRARY_PATH", "")]
        return {**os.environ, "LD_LIBRARY_PATH": ":".join(p for p in paths if p)}

    def start(self, timeout: float = 180.0) -> TritonServer:
        for port in (self.grpc_port, self.http_port, self.metrics_port):
            with socket.socket() as sock:
                if port and sock.connect_ex((self.address, port)) == 0:
                    raise AvemoError(f"{self.address}:{port} is in use; pick another port")
        log = self.log_file.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,  # the stubs share its session: stop() can kill them all
            preexec_fn=functools.partial(die_with_parent, os.getpid()),  # the thread that starts it must outlive it
        )
        log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.address}:{self.http_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float) -> None:
        """Until the server says it is ready (all models loaded); AvemoError naming why not otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise self.failure(f"tritonserver exited (code {code}) before it was ready")
            try:
                if self._get("/v2/health/ready")[0] == 200:
                    self._stubs = stubs_of(self.process.pid)
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise self.failure(f"tritonserver not ready after {timeout:.0f} s")

    def failure(self, what: str) -> AvemoError:
        """An error saying ``what``, the models that failed to load and why (from the log), and where the
        whole log is (kept)."""
        self.keep_log = True
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            text = ""
        # Triton logs each as one line: ... "failed to load 'M' version 1: <reason>\n\nAt:\n<stack>"
        reasons = dict(re.findall(r"failed to load '([^']+)' version \d+: (.*?)(?:\\n|\"$)", text, re.M))
        said = "".join(f"\n  {model}: {reason}" for model, reason in reasons.items()) or f"\n{self.log_tail()}"
        return AvemoError(f"{what}:{said}\n(whole log: {self.log_file})")

    def dead_stubs(self) -> list[str]:
        """Models whose Python-backend process (stub) died since the server became ready (killed for memory,
        crashed): Triton still reports them READY but fails every request to them."""
        alive = stubs_of(self.process.pid) if self.running else {}
        return sorted({model for pid, model in self._stubs.items() if pid not in alive})

    def models(self) -> dict[str, str]:
        """{model name: state} of the repository's models as the server reports them."""
        status, body = self._get("/v2/repository/index", method="POST")
        if status != 200:
            raise AvemoError(f"tritonserver: repository index failed ({status}: {body[:200]!r})")
        return {m["name"]: m.get("state", "") for m in json.loads(body)}

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (Triton unloads its models and exits), SIGKILL after ``timeout``; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the stubs too: they share its session
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        """Stop; remove the scratch folder, and the temporary log unless something failed."""
        self.keep_log |= bool(self.stop())
        self._scratch.cleanup()
        if not self.keep_log:
            self.log_file.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
