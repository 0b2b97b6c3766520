"""What a Hugging Face Space needs, checked without one: the README's front matter, requirements.txt
against pyproject.toml, the app's reading of a Space's variables, and the bundle a Space receives
(scripts/space_bundle.sh: binaries and files over 10 MB through git LFS). The Space itself, a fresh
venv from requirements.txt and one streamed shot, is `make space-check` (not in CI: minutes, ~6 GB).
"""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

from demo import app as demo_app  # noqa: E402
from demo.app import server_address  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import space_check  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Where the app listens


def test_with_no_flag_and_no_variable_the_app_listens_on_this_machine_only():
    assert server_address(None, None, environ={}) == ("127.0.0.1", 7860)
    blank = {"GRADIO_SERVER_NAME": " ", "GRADIO_SERVER_PORT": "", "PORT": " "}  # variables set to nothing
    assert server_address(None, None, environ=blank) == ("127.0.0.1", 7860)


def test_a_spaces_variables_choose_host_and_port():
    space = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861", "PORT": "8080"}
    assert server_address(None, None, environ=space) == ("0.0.0.0", 7861)  # gradio's own variable first
    assert server_address(None, None, environ={"PORT": " 8080 "}) == ("127.0.0.1", 8080)  # a container platform's


def test_command_line_flags_override_the_variables():
    space = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861", "PORT": "8080"}
    assert server_address("127.0.0.1", 9000, environ=space) == ("127.0.0.1", 9000)
    assert server_address(None, 9000, environ=space) == ("0.0.0.0", 9000)


@pytest.mark.parametrize("env, name", [({"PORT": "web"}, "PORT"), ({"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT"),
                                       ({"PORT": "0"}, "PORT")])
def test_a_bad_port_variable_is_an_error_naming_it(env, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected a port number 1-65535"):
        server_address(None, None, environ=env)


def test_the_app_launches_where_the_space_says_without_a_share_link(monkeypatch, capsys):
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    monkeypatch.delenv("SHOTSTREAM_DEMO_ARGS", raising=False)
    assert demo_app.main(["--no-warmup"]) == 0
    assert (launched["server_name"], launched["server_port"], launched["share"]) == ("0.0.0.0", 8123, False)
    assert demo_app.main(["--no-warmup", "--host", "127.0.0.1", "--port", "9001"]) == 0
    assert (launched["server_name"], launched["server_port"]) == ("127.0.0.1", 9001)
    monkeypatch.setenv("PORT", "eighty")
    assert demo_app.main(["--no-warmup"]) == 2
    assert "error: PORT: expected a port number" in capsys.readouterr().err


def test_a_spaces_variable_gives_the_flags_and_typed_flags_win(monkeypatch, capsys):
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    monkeypatch.setenv("SHOTSTREAM_DEMO_ARGS", "--port 9002 --max-concurrent 2")
    assert demo_app.main(["--no-warmup"]) == 0
    assert launched["server_port"] == 9002 and "at most 2 generation(s)" in capsys.readouterr().out
    assert demo_app.main(["--no-warmup", "--port", "9003"]) == 0
    assert launched["server_port"] == 9003
    monkeypatch.setenv("SHOTSTREAM_DEMO_ARGS", "--model 'unclosed")
    assert demo_app.main(["--no-warmup"]) == 2
    assert "error: SHOTSTREAM_DEMO_ARGS: No closing quotation" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The files a Space reads


def test_readme_front_matter_is_a_gradio_space_on_the_tested_gradio_and_python():
    meta = space_check.front_matter(ROOT / "README.md")
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gr.__version__  # the Space installs exactly this gradio
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (ROOT / meta["app_file"]).is_file() and meta["app_file"] == "demo/app.py"
    assert len(meta["short_description"]) <= 60 and "CPU" in meta["short_description"]  # the Hub's limit


def test_the_front_matter_has_one_source():
    with pytest.raises(space_check.CheckFailed, match="no front matter"):
        space_check.front_matter(ROOT / "demo" / "README.md")


def pins() -> dict[str, str]:
    """requirements.txt as {name: version}; every line must be an exact pin."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+]+)", line)
            assert match, f"requirements.txt: {line!r} is not a pin (name==version)"
            name = canonicalize_name(match[1])
            assert name not in found, f"requirements.txt names {name} twice"
            found[name] = match[2]
    return found


def test_requirements_pins_agree_with_pyproject():
    pinned = pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    assert set(pinned) <= set(deps), f"requirements.txt pins what pyproject.toml does not depend on: {set(pinned) - set(deps)}"
    for name, version in pinned.items():
        assert deps[name].specifier.contains(version, prereleases=True), \
            f"requirements.txt pins {name}=={version}, pyproject.toml asks {deps[name]}"
    for name in ("torch", "torchvision", "gradio"):  # the pinned ones: equal, not merely compatible
        assert f"=={pinned[name]}" == str(deps[name].specifier)
    assert pinned["gradio"] == space_check.front_matter(ROOT / "README.md")["sdk_version"]


def test_packages_txt_gives_the_app_ffmpeg():  # gradio's streaming video needs ffmpeg and ffprobe
    assert "ffmpeg" in (ROOT / "packages.txt").read_text().split()


# ---------------------------------------------------------------------------------------------
# What a Space receives


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def source(tmp_path):
    """A small repository with the bundle script, text, binaries and a text file over 10 MB."""
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    for f in ("scripts/space_bundle.sh", "scripts/install_system_deps.sh", "packages.txt"):
        shutil.copy(ROOT / f, src / f)
    (src / "ck").mkdir()
    (src / "ck" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + bytes(100))
    (src / "sheet one.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00" + bytes(50))
    (src / "weights").write_bytes(bytes(10))  # binary, no extension: tracked by its name
    (src / "rows.csv").write_text("a,b\n" * 2_600_000)  # 10.4 MB of text
    (src / "notes.md").write_text("# notes\n")
    git("init", "-q", "-b", "main", cwd=src)
    git("add", "-A", cwd=src)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init", cwd=src)
    return src


@pytest.mark.skipif(shutil.which("git-lfs") is None, reason="git-lfs is not installed (make test installs it)")
def test_the_bundle_stores_binaries_and_big_files_through_lfs(source, tmp_path):
    with pytest.raises(space_check.CheckFailed) as refused:  # the repository itself: a Space refuses it
        space_check.check_blobs(source)
    for name in ("ck/model.safetensors (binary)", "sheet one.png (binary)", "weights (binary)", "rows.csv (10.4 MB)"):
        assert name in str(refused.value)
    (source / "notes.md").write_text("# uncommitted edit\n")
    (source / "scratch.txt").write_text("untracked\n")
    bundle = tmp_path / "bundle"
    made = subprocess.run(["bash", "scripts/space_bundle.sh", str(bundle)], cwd=source, check=True, capture_output=True, text=True)
    assert "uncommitted changes are not in the bundle" in made.stdout
    assert (bundle / "notes.md").read_text() == "# notes\n" and not (bundle / "scratch.txt").exists()  # HEAD, as a push sends
    assert len(git("log", "--format=%s", cwd=bundle).splitlines()) == 1  # no history
    lfs = set(git("lfs", "ls-files", "-n", cwd=bundle).splitlines())
    assert lfs == {"ck/model.safetensors", "sheet one.png", "weights", "rows.csv"}
    space_check.check_blobs(bundle)  # what a push would send: no binary or big plain blob
    assert (bundle / "rows.csv").stat().st_size == (source / "rows.csv").stat().st_size  # the working files are real

    other = tmp_path / "not-a-bundle"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    run = subprocess.run(["bash", "scripts/space_bundle.sh", str(other)], cwd=source, capture_output=True, text=True)
    assert run.returncode == 2 and "not a bundle made by this script" in run.stderr
    assert (other / "keep.txt").read_text() == "mine"  # never deleted
