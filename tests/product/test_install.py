"""oada-jobs as an installed package: what the wheel and sdist hold, the core
install without extras, and the commands that say which extra they need.

The core-install test builds the wheel and installs it with uv into a fresh
virtualenv, dependencies and all (from uv's cache or the package index).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio.to_thread
import pytest
import typer.main
from product_helpers import CLI

import oada_jobs
from oada_jobs import MissingExtra, _extras
from oada_jobs.cli import _minimal, app
from oada_jobs.testing import EmbeddedServer, embedded_server

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"

#: What only the extras bring: none may be in a core install.
EXTRA_DISTRIBUTIONS = {
    "typer",
    "rich",
    "click",
    "starlette",
    "uvicorn",
    "httptools",
    "cryptography",
}

needs_uv = pytest.mark.skipif(
    not UV.exists(), reason="uv is not installed (make setup installs it)"
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel and sdist, built once for this module."""
    if not UV.exists():
        pytest.skip("uv is not installed (make setup installs it)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [str(UV), "build", "--quiet", "--out-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("oada_jobs-*.whl")
    return wheel


def run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


# -- what the archives hold ---------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_the_license_the_example_and_the_version(dist: Path) -> None:
    names = zipfile.ZipFile(wheel_of(dist)).namelist()
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    text = zipfile.ZipFile(wheel_of(dist)).read(license_file).decode()
    assert text == (REPO / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    # `oada-jobs demo` runs the example from the package itself.
    assert "oada_jobs/examples/email_service.py" in names
    assert "oada_jobs/py.typed" in names
    metadata = zipfile.ZipFile(wheel_of(dist)).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    )
    assert f"Version: {oada_jobs.__version__}".encode() in metadata
    assert b"License-Expression: Apache-2.0" in metadata
    assert b"Project-URL: Source" in metadata
    assert b"Provides-Extra: server" in metadata
    assert b"Provides-Extra: cli" in metadata
    assert b"Provides-Extra: bench" not in metadata
    # The server is started with `oada-jobs serve`: its extra brings the cli's.
    assert b"Requires-Dist: typer<0.29,>=0.16; extra == 'server'" in metadata


@pytest.mark.slow
def test_sdist_ships_the_license_docs_and_examples(dist: Path) -> None:
    (sdist,) = dist.glob("oada_jobs-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for expected in ("LICENSE", "README.md", "CHANGELOG.md", "mkdocs.yml", "pyproject.toml"):
        assert expected in names
    assert "examples/email_service.py" in names
    assert "docs/index.md" in names


# -- the core install -----------------------------------------------------------


@pytest.fixture(scope="module")
def core_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the wheel installed without extras; its bin directory."""
    env = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run(
        [str(UV), "venv", "--quiet", "--python", sys.executable, str(env)],
        check=True,
        capture_output=True,
    )
    installed = run(
        [UV, "pip", "install", "--quiet", "--python", env / "bin" / "python", wheel_of(dist)]
    )
    assert installed.returncode == 0, installed.stderr
    return env / "bin"


def core_env() -> dict[str, str]:
    """The environment for commands of the core venv: no OADA settings leak in."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OADA_", "VIRTUAL_ENV", "PYTHON"))
    }


@pytest.mark.slow
def test_core_install_has_no_extra_dependency(core_venv: Path) -> None:
    listed = run([UV, "pip", "list", "--python", core_venv / "python", "--format", "freeze"])
    installed = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert "oada-jobs" in installed
    assert not installed & EXTRA_DISTRIBUTIONS, installed & EXTRA_DISTRIBUTIONS


@pytest.mark.slow
def test_core_install_imports_the_framework_without_server_or_cli(core_venv: Path) -> None:
    code = (
        "import sys, oada_jobs, oada_jobs.testing, oada_jobs.client, oada_jobs.cli;"
        "print(sorted(m for m in ('typer', 'rich', 'click', 'starlette', 'uvicorn',"
        " 'cryptography', 'jinja2', 'opentelemetry') if m in sys.modules))"
    )
    result = run([core_venv / "python", "-c", code], cwd=core_venv, env=core_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
async def test_core_install_runs_a_service(
    core_venv: Path, server: EmbeddedServer, tmp_path: Path
) -> None:
    (tmp_path / "my_service.py").write_text(
        "from oada_jobs import Service\nservice = Service('svc')\n"
    )
    oada_jobs_bin = core_venv / "oada-jobs"
    version = run([oada_jobs_bin, "--version"], env=core_env())
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"oada-jobs {oada_jobs.__version__}"

    helped = run([oada_jobs_bin, "run", "--help"], env=core_env())
    assert helped.returncode == 0, helped.stderr
    assert "MODULE:SERVICE" in helped.stdout
    assert "--concurrency" in helped.stdout

    env = core_env() | {"OADA_DOMAIN": server.url, "OADA_TOKEN": server.token}
    # In a thread: the embedded server answers on this test's event loop.
    checked = await anyio.to_thread.run_sync(
        partial(run, [oada_jobs_bin, "run", "my_service:service", "--check"], cwd=tmp_path, env=env)
    )
    assert checked.returncode == 0, checked.stderr
    assert f"svc: settings and server OK ({server.url})" in checked.stderr

    refused = await anyio.to_thread.run_sync(
        partial(
            run,
            [oada_jobs_bin, "run", "my_service:service", "--check"],
            cwd=tmp_path,
            env=env | {"OADA_TOKEN": "wrong"},
        )
    )
    assert refused.returncode == 4, refused.stderr
    assert "refused the token" in refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("serve", "server"),
        ("demo", "server"),
        ("dashboard", "dashboard"),
        ("jobs", "cli"),
        ("queues", "cli"),
    ],
)
def test_core_install_names_the_extra_a_command_needs(
    core_venv: Path, command: str, extra: str
) -> None:
    result = run([core_venv / "oada-jobs", command, "--help"], env=core_env())
    assert result.returncode == 1
    assert result.stderr == (
        f"error: oada-jobs {command} needs the {extra} extra: pip install 'oada-jobs[{extra}]'\n"
    )


# -- the demo from an installed wheel ------------------------------------------


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel(dist: Path, tmp_path: Path) -> None:
    # The wheel in a virtualenv of its own, its dependencies the development
    # environment's (a path entry after the venv's own), run away from the
    # source checkout.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    (site,) = (env_dir / "lib").glob("python3*/site-packages")
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    (site / "zz_dependencies.pth").write_text(deps + "\n")
    installed = run(
        [
            UV,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python",
            env_dir / "bin" / "python",
            wheel_of(dist),
        ]
    )
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run(
        [env_dir / "bin" / "oada-jobs", "demo", "--jobs", "2", "--timeout", "1"],
        cwd=elsewhere,
        env=core_env() | {"COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "oada_jobs.examples.email_service" in result.stdout
    assert "2 of 2 as expected" in result.stdout


# -- the same checks in process -----------------------------------------------


def test_minimal_cli_names_the_server_extra(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _minimal.main(["serve", "--port", "8080"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: oada-jobs serve needs the server extra: pip install 'oada-jobs[server]'\n"
    )


def test_minimal_cli_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _minimal.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"oada-jobs {oada_jobs.__version__}\n"


def test_minimal_run_takes_the_options_of_the_full_run() -> None:
    # The two front ends of `run` must not drift apart.
    (subcommands,) = (
        action
        for action in _minimal.parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    minimal = {
        option for action in subcommands.choices["run"]._actions for option in action.option_strings
    }
    full_run = typer.main.get_group(app).commands["run"]
    full = {option for param in full_run.params for option in param.opts if option.startswith("-")}
    assert minimal - {"-h"} == full | {"--help"}


async def test_full_cli_names_the_server_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_extras.EXTRAS, "server", ("starlette", "no_such_package_here"))
    result = await CLI({})("serve", "--port", "0")
    assert result.exit_code == 1
    assert (
        "oada-jobs serve needs the server extra: pip install 'oada-jobs[server]'" in result.stderr
    )
    result = await CLI({})("demo")
    assert result.exit_code == 1
    assert "oada-jobs demo needs the server extra" in result.stderr


async def test_full_cli_names_the_dashboard_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_extras.EXTRAS, "dashboard", ("jinja2", "no_such_package_here"))
    result = await CLI({})("dashboard", "--domain", "http://127.0.0.1:1", "--token", "t")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: oada-jobs dashboard needs the dashboard extra: pip install 'oada-jobs[dashboard]'"
    )


async def test_full_cli_prints_the_version() -> None:
    result = await CLI({})("--version")
    assert result.exit_code == 0
    assert result.stdout == f"oada-jobs {oada_jobs.__version__}\n"


async def test_embedded_server_names_the_server_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_extras.EXTRAS, "server", ("no_such_package_here",))
    with pytest.raises(MissingExtra) as raised:
        async with embedded_server():
            pass
    assert str(raised.value) == (
        "oada_jobs.testing.embedded_server() needs the server extra: "
        "pip install 'oada-jobs[server]'"
    )


def test_minimal_cli_help_names_the_extras(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _minimal.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "run       Run a service until SIGTERM or SIGINT" in out
    assert "  jobs, queues, cron, report   pip install 'oada-jobs[cli]'\n" in out
    assert "  serve, demo                  pip install 'oada-jobs[server]'" in out
