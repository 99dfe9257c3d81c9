"""README's Python install commands and Python snippets, run as written (issue #14).

* The shell block after ``<!-- optd-python-install -->`` (a venv with --system-site-packages, then
  ``pip install`` of client/python, which builds the native extension with CMake) runs word for
  word with bash, in a copy of the repository (pip builds in the source tree) and with HOME in a
  temporary folder (the venv is ``~/.venvs/optd``). It must print ``native data path: True``, and
  the venv's optd must be the installed one, extension included.
* Every ```python block of README's "Python client" section must be marked
  ``<!-- optd-readme-python -->``; each runs, as written, with the venv's interpreter against a
  real optd (``OPTD_ADDRESS``), twice in a row (a snippet must not leave a session behind that
  makes its second run fail).

Slow (it compiles the C++ client: a few minutes on 2 cores); bounded by TIMEOUT_S.
"""

import os
import re
import shutil
import subprocess
import time

from optd_testing import REPO_ROOT, OptdProcess  # noqa: F401 (optd_server fixture in conftest)

TIMEOUT_S = 1500
INSTALL_MARK = "<!-- optd-python-install -->"
SNIPPET_MARK = "<!-- optd-readme-python -->"


def _readme():
    return (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def _block_after(text, mark, language):
    start = text.index(mark) + len(mark)
    match = re.compile(r"\s*```" + language + r"\n(.*?)\n```", re.S).match(text, start)
    assert match, f"no ```{language} block right after {mark}"
    return match.group(1)


def _python_section_snippets(text):
    section = text[text.index("## Python client"):text.index("## Go client")]
    blocks = list(re.finditer(r"```python\n(.*?)\n```", section, re.S))
    assert len(blocks) >= 2
    for block in blocks:
        before = section[:block.start()].rstrip()
        assert before.endswith(SNIPPET_MARK), \
            f"README: a Python snippet is not marked {SNIPPET_MARK}:\n{block.group(1)[:200]}"
    return [b.group(1) for b in blocks]


def test_readme_install_commands_and_python_snippets_run_as_written(tmp_path, optd_server):
    text = _readme()
    install = _block_after(text, INSTALL_MARK, "sh")
    snippets = _python_section_snippets(text)

    repo = tmp_path / "optd"
    skip = shutil.ignore_patterns("build", "build-*", ".git", "__pycache__", "*.egg-info",
                                  "vendor", "Testing")

    def ignore(folder, names):  # build trees, and stubs an editable install left in the source
        out = set(skip(folder, names))
        if folder.endswith(os.path.join("client", "python", "optd")):
            out |= {n for n in names if n == "v1" or n.startswith("_native.")}
        return out

    shutil.copytree(REPO_ROOT, repo, ignore=ignore)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "OPTD_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    start = time.monotonic()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", install], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "native data path: True" in proc.stdout, proc.stdout[-2000:]
    print(f"install: {time.monotonic() - start:.0f} s")

    python = home / ".venvs" / "optd" / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import optd, optd._native, optd.v1.optd_pb2 as p; "
                            "print(optd.__file__); print(optd._native.__file__); print(p.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
    for line in where.stdout.split():
        assert line.startswith(str(home / ".venvs" / "optd")), where.stdout

    run_env = dict(env, OPTD_ADDRESS=optd_server.address)
    for i, snippet in enumerate(snippets):
        for attempt in (1, 2):
            run = subprocess.run([str(python), "-c", snippet], cwd=tmp_path, env=run_env,
                                 capture_output=True, text=True, timeout=300, check=False)
            assert run.returncode == 0, (f"README Python snippet {i + 1}, run {attempt}:\n"
                                         f"{snippet}\n{run.stdout}\n{run.stderr}")
