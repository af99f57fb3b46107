"""What a newcomer starts from: a fresh copy of the repository and a fresh virtual
environment, and the README's two set-up commands. Used by test_readme.py and
test_binder.py; ``.ci/run`` runs the README's test command through
``python tests/fresh_install.py test-command``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The ``bash`` code blocks of the README's "Set up" section, in order."""
    text = readme.read_text()
    section = re.search(r"^## Set up\n(.*?)^## ", text, re.DOTALL | re.MULTILINE)
    assert section, "the README has no '## Set up' section"
    return [
        block.strip()
        for block in re.findall(r"^```bash\n(.*?)^```", section[1], re.DOTALL | re.MULTILINE)
    ]


def install_then(command: str) -> tuple[str, str]:
    """A README command ``python -m pip install ... && rest`` as its two halves. The tests
    run the install (it reaches PyPI and npm) without the network guard
    (:func:`network_guard.without_guard`), the rest under it, as ``&&`` would."""
    install, _, rest = command.partition(" && ")
    assert "pip install" in install and rest, command
    return install, rest


def fresh_copy(destination: Path) -> Path:
    """Copy what a clone of this checkout would hold, with its uncommitted changes: the
    files git tracks or would track (nothing it ignores, so no build and no venv)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not source.is_file():  # deleted but not yet committed
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination


#: pip settings of this machine that say where packages come from, kept in a fresh
#: environment as a newcomer on this machine has them (a folder of wheels, an index, its
#: certificate); every other PIP_ variable is left out.
PACKAGE_SOURCES = frozenset(
    {
        "PIP_FIND_LINKS",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_TRUSTED_HOST",
        "PIP_CERT",
        "PIP_DEFAULT_TIMEOUT",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }
)


def fresh_venv(root: Path) -> dict[str, str]:
    """A new virtual environment (without this Python's packages) under ``root``, and the
    environment to run commands in it: its ``bin`` first on PATH, a home and Jupyter
    folders of its own, nothing of this process's Python or Jupyter settings (only where
    pip finds packages, :data:`PACKAGE_SOURCES`)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    home = root / "home"
    home.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if key in PACKAGE_SOURCES
        or not key.startswith(("JUPYTER", "PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA"))
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / ".local" / "share" / "jupyter"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        # yarn's global mirror of this machine, so that the extension's npm packages are
        # not all downloaded again
        YARN_GLOBAL_FOLDER=os.environ.get("YARN_GLOBAL_FOLDER")
        or str(Path.home() / ".yarn" / "berry"),
    )
    return env


def run_logged(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    """Run ``command``, its output appended to ``log``; fail with the log's end."""
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        result = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    if result.returncode:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{log.read_text()[-6000:]}"
        )


if __name__ == "__main__":
    if sys.argv[1:] != ["test-command"]:
        sys.exit("usage: python tests/fresh_install.py test-command")
    print(readme_commands()[1])
