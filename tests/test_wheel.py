"""The wheel installs clean: `python -m build` makes it (and the sdist), a fresh virtual environment
outside the checkout installs it (pip's cache serves the dependencies), and from there, with nothing
of the checkout in reach, `esl-cb --version`, `esl-cb db upgrade` on a scratch PostgreSQL database,
a short `esl-cb demo` and `esl-cb doctor` against the installed simulator all work."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .fixtures import create_database, drop_database
from .procs import free_port, wait_port

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.timeout(600)
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    assert not tmp_path.is_relative_to(REPO)
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(REPO)], tmp_path, pip_env)
    wheel = next((tmp_path / "dist").glob("esl_cb-*.whl"))
    sdist = next((tmp_path / "dist").glob("esl_cb-*.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("esl_cb/sim/profile.json", "esl_cb/scripts/callback-example.yaml", "migrations/env.py",
                   "migrations/versions/0001_initial.py", "esl_cb/systemd.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"deploy/systemd/esl-cb.service", "deploy/systemd/esl-cb-api.service", "deploy/prometheus/esl-cb.rules.yml", "deploy/grafana/esl-cb.json",
            "freeswitch_conf/dialplan/public/50_esl_cb.xml"} <= in_sdist

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, pip_env)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, pip_env)

    # From here on nothing of the checkout: another folder, no PYTHONPATH, no ESL_CB_* settings.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    esl_cb = str(venv / "bin" / "esl-cb")
    assert run([esl_cb, "--version"], tmp_path, env).stdout.strip() == "esl-cb, version 0.1.0"
    where = run([str(venv / "bin" / "python"), "-c", "import esl_cb, migrations; print(esl_cb.__file__); "
                 "print(migrations.__file__)"], tmp_path, env).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    share = venv / "share" / "esl-cb"
    for shipped in ("systemd/esl-cb.service", "systemd/esl-cb.env", "systemd/esl-cb-api.service",
                    "systemd/esl-cb-api.env", "prometheus/esl-cb.rules.yml",
                    "prometheus/esl-cb.rules.test.yml", "grafana/esl-cb.json", "freeswitch/README.md",
                    "freeswitch/dialplan/public/50_esl_cb.xml"):
        assert (share / shipped).is_file(), shipped

    db = create_database()                        # empty: `db upgrade` makes the schema
    sim = None
    try:
        assert "database is at revision head" in run([esl_cb, "db", "upgrade", "--db", db], tmp_path, env).stdout
        demo = run([esl_cb, "demo", "--duration", "10", "--speed", "20", "--callers", "4", "--agents", "2"],
                   tmp_path, env, timeout=180)
        assert "Reporting and billing" in demo.stdout and "contacts" in demo.stdout
        port = free_port()
        sim = subprocess.Popen([esl_cb, "sim", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                               stdout=(tmp_path / "sim.log").open("wb"), stderr=subprocess.STDOUT)
        wait_port(port)
        doctor = run([esl_cb, "doctor", "--db", db, "--esl", f"127.0.0.1:{port}"], tmp_path, env, timeout=60)
        assert "accepted the password" in doctor.stdout and "reachable and migrated" in doctor.stdout
        assert "FAIL" not in doctor.stdout, doctor.stdout
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        drop_database(db)
