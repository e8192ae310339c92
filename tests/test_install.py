"""`make install` as an operator runs it (issue 13, item 16), into throw-away directories.

`make install PREFIX=… CONFDIR=… UNITDIR=…` must create every directory, leave the
secrets (`env`) 0600 root and `bridge.toml` readable by the unit's dynamic user, and write
a unit that names the paths it was given. Then the installed `ExecStart` runs as an
unprivileged user (`nobody`, via setpriv, with the environment systemd would load from
`EnvironmentFile=`) and answers /webhook/health; where systemd is PID 1 the installed
unit's own [Service] settings run it through `systemd-run`.

The package is built once into a wheel and installed offline with `--no-deps`; the
installed venv finds the dependencies through a .pth file naming this checkout's venv, so
the module costs one wheel build and one venv, not a download of every dependency.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.process import free_port

UNIT = "crm-bridge.service"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("make") is None,
    reason="installs as root and runs the service as `nobody` (needs root, setpriv, make)",
)


@dataclass(frozen=True)
class Installed:
    root: Path
    prefix: Path
    confdir: Path
    unitdir: Path
    bindir: Path

    @property
    def unit(self) -> dict[str, list[str]]:
        """The [Service] settings of the installed unit (a key may repeat)."""
        settings: dict[str, list[str]] = {}
        section = ""
        for line in (self.unitdir / UNIT).read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and line and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
        return settings

    def environment(self, **overrides: str) -> dict[str, str]:
        """What systemd loads from `EnvironmentFile=` (KEY=VALUE lines), plus overrides."""
        [env_file] = self.unit["EnvironmentFile"]
        env: dict[str, str] = {}
        for line in Path(env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
        return {**env, **overrides}


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    # Outside /tmp: a unit with PrivateTmp=yes would not see an install there. Every
    # directory on the way is 0755 so that `nobody` can reach the files.
    parent = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="crm-bridge-install-", dir=parent))
    root.chmod(0o755)
    try:
        wheels = root / "wheels"
        subprocess.run(  # noqa: S603 - pip on this checkout
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, ROOT],
            check=True,
            timeout=300,
            capture_output=True,
        )
        [wheel] = wheels.glob("crm_bridge-*.whl")
        target = Installed(
            root, root / "opt", root / "etc" / "crm-bridge", root / "units", root / "bin"
        )
        make = [
            "make",
            "-C",
            str(ROOT),
            "install",
            f"PYTHON={sys._base_executable}",  # the interpreter, not this venv
            f"PREFIX={target.prefix}",
            f"CONFDIR={target.confdir}",
            f"UNITDIR={target.unitdir}",
            f"BINDIR={target.bindir}",  # not the machine's /usr/local/bin
            f"PACKAGE={wheel}",
            "PIP_INSTALL_ARGS=--no-deps --no-index",
            "UPGRADE_PIP=no",
        ]
        done = subprocess.run(make, timeout=300, capture_output=True, text=True)  # noqa: S603
        assert done.returncode == 0, done.stdout + done.stderr
        [site] = (target.prefix / "venv" / "lib").glob("python3*/site-packages")
        deps = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
        (site / "zz-test-dependencies.pth").write_text(f"{deps}\n")
        yield target
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_creates_every_directory_with_modes_the_unit_can_use(
    installed: Installed,
) -> None:
    assert (installed.unitdir / UNIT).is_file()
    assert mode(installed.unitdir / UNIT) == 0o644
    assert mode(installed.confdir) == 0o755
    assert mode(installed.confdir / "bridge.toml") == 0o644  # no secrets; the service reads it
    assert mode(installed.confdir / "env") == 0o600  # secrets; systemd reads it as root
    assert (installed.confdir / "env").stat().st_uid == 0
    assert (installed.prefix / "venv" / "bin" / "crm-bridge").is_file()
    # The command on PATH (issue 16): a link to the venv's entry point.
    link = installed.bindir / "crm-bridge"
    assert link.is_symlink()
    assert link.resolve() == (installed.prefix / "venv" / "bin" / "crm-bridge").resolve()


def test_installed_unit_names_the_paths_it_was_installed_to(installed: Installed) -> None:
    text = (installed.unitdir / UNIT).read_text()
    assert "/opt/crm-bridge" not in text
    assert "/etc/crm-bridge/" not in text.replace(str(installed.confdir), "")
    unit = installed.unit
    assert unit["ExecStart"] == [f"{installed.prefix}/venv/bin/crm-bridge serve"]
    assert unit["EnvironmentFile"] == [f"{installed.confdir}/env"]
    assert f"Documentation=file://{installed.prefix}/README.md" in text
    env = installed.environment()
    assert env["CONFIG_FILE"] == f"{installed.confdir}/bridge.toml"


def wait_for_health(port: int, process: subprocess.Popen[bytes] | None = None) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        if process is not None and process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"the service exited with {process.returncode}:\n{out}")
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{port}/webhook/health", timeout=2)
        if time.monotonic() > deadline:
            raise AssertionError("no answer from /webhook/health in 30 s")
        time.sleep(0.1)


def test_installed_exec_start_serves_as_an_unprivileged_user(installed: Installed) -> None:
    # What the unit gives the service: its environment file (read by systemd as root), a
    # state directory only it owns (StateDirectory=), that directory as the working one.
    state = installed.root / "state"
    state.mkdir()
    shutil.chown(state, "nobody")
    state.chmod(0o700)
    port = free_port()
    env = installed.environment(DATABASE_PATH=str(state / "bridge.sqlite"), PORT=str(port))
    [exec_start] = installed.unit["ExecStart"]
    command = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup" if _group_exists("nogroup") else "--regid=nobody",
        "--clear-groups",
        "--no-new-privs",
        *shlex.split(exec_start),
    ]
    with subprocess.Popen(  # noqa: S603 - the installed unit's own ExecStart
        command,
        cwd=state,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        try:
            answer = wait_for_health(port, process)
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert answer.status_code in (200, 503)
    assert answer.json()["database"]["ok"] is True
    assert (state / "bridge.sqlite").stat().st_uid != 0


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


SYSTEMD_RUN_SKIPS = ("Type", "Restart", "RestartSec", "ExecStart", "EnvironmentFile")


@pytest.mark.skipif(
    not Path("/run/systemd/system").is_dir() or shutil.which("systemd-run") is None,
    reason="systemd is not PID 1 here",
)
def test_installed_unit_settings_run_under_systemd(installed: Installed) -> None:
    # The installed [Service] settings as a transient unit: the dynamic user, the sandbox
    # and the state directory are systemd's own. Its own state directory and port, so a
    # real installation on this host is left alone.
    name = f"crm-bridge-test-{os.getpid()}"
    port = free_port()
    env_file = installed.root / "test.env"
    env = installed.environment(DATABASE_PATH=f"/var/lib/{name}/bridge.sqlite", PORT=str(port))
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    env_file.chmod(0o600)
    properties = [f"EnvironmentFile={env_file}"]
    for key, values in installed.unit.items():
        if key in SYSTEMD_RUN_SKIPS:
            continue
        for value in values:
            value = value.replace("crm-bridge", name) if key.endswith("Directory") else value
            properties.append(f"{key}={value}")
    [exec_start] = installed.unit["ExecStart"]
    run = ["systemd-run", f"--unit={name}", "--collect", "--quiet"]
    run += [f"--property={prop}" for prop in properties]
    subprocess.run([*run, *shlex.split(exec_start)], check=True, timeout=60)  # noqa: S603
    try:
        answer = wait_for_health(port)
    finally:
        subprocess.run(["systemctl", "stop", name], timeout=60, check=False)  # noqa: S603, S607
    assert answer.status_code in (200, 503)
    assert answer.json()["database"]["ok"] is True
