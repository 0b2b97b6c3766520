"""Run a Space bundle (scripts/space_bundle.sh) as a Hugging Face Space would, and stream one shot.

    make space-check                 # = make space-bundle, then this on /tmp/shotstream-space
    python3 scripts/space_check.py BUNDLE [--work DIR] [--reuse-venv] [--port N]

Standard library only: it runs under the system python, before any venv exists. Not in CI: the
fresh venv is ~6 GB and takes minutes. Each step stops the check when it fails:
1. blobs: no blob of the bundle's commit is binary or over 10 MB (those go through LFS), and the
   weights are LFS objects;
2. clone: the bundle cloned with LFS, as a Space checks a repository out, holds the real weights;
3. venv: a fresh venv of the README's python_version, `pip install -r requirements.txt` run on
   that file alone (a Space installs it before the repository is copied in), then what a Space's
   builder adds to every gradio Space (`spaces`: gradio's Space mode needs it), then `pip check`;
4. system: what packages.txt names is on the PATH (a Space apt-installs it);
5. app: `python <app_file>` in the clone with GRADIO_SERVER_NAME=0.0.0.0 and PORT set, as a Space
   starts it; waits for the page and checks that it listens on 0.0.0.0;
6. shot: one shot queued and streamed through gradio_client, then the story downloaded as mp4;
7. stop: the app ends on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LIMIT = 10_000_000  # bytes, as scripts/space_bundle.sh counts the Space's 10 MB
BINARY_SNIFF = 8000  # git's own test: a NUL byte in a file's first 8000 bytes makes it binary
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
# Clone as a Space does, with git-lfs's filters, whatever this machine's global git config says.
LFS_CONFIG = ["-c", "filter.lfs.process=git-lfs filter-process", "-c", "filter.lfs.required=true",
              "-c", "filter.lfs.smudge=git-lfs smudge -- %f", "-c", "filter.lfs.clean=git-lfs clean -- %f"]
PROMPT = "a red striped star walks left in a snowy field, wide shot"
PAGE_TIMEOUT = 600  # s: the app loads its model and text encoder before it serves
SHOT_TIMEOUT = 600  # s


class CheckFailed(Exception):
    pass


def ok(name: str, detail: str) -> None:
    print(f"ok  {name:<7} {detail}", flush=True)


def run(cmd: list, **kw) -> str:
    proc = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kw)
    if proc.returncode:
        raise CheckFailed(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def front_matter(readme: Path) -> dict[str, str]:
    """The `key: value` lines between a README's opening `---` lines (all of YAML a Space's card uses here)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "---" or "---" not in lines[1:]:
        raise CheckFailed(f"{readme} has no front matter: a Space reads its sdk and app_file from there")
    meta = {}
    for line in lines[1:lines.index("---", 1)]:
        key, _, value = line.partition(":")
        meta[key.strip()] = value.strip().strip('"')
    return meta


def blobs(repo: Path) -> dict[str, tuple[int, bytes]]:
    """path -> (size, first BINARY_SNIFF bytes) of every file in the commit at HEAD."""
    tree = run(["git", "-C", repo, "ls-tree", "-r", "-l", "-z", "HEAD"]).split("\0")
    entries = [(meta.split()[2], path) for meta, path in (e.split("\t", 1) for e in tree if e) if meta.split()[1] == "blob"]
    out = subprocess.run(["git", "-C", repo, "cat-file", "--batch"], input="".join(f"{sha}\n" for sha, _ in entries).encode(),
                         capture_output=True, check=True).stdout
    found, at = {}, 0
    for _, path in entries:  # each answer: "<sha> blob <size>\n<content>\n", in the order asked
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        found[path] = (size, out[header_end + 1:header_end + 1 + min(size, BINARY_SNIFF)])
        at = header_end + 1 + size + 1
    return found


# ---------------------------------------------------------------------------------------------
# The steps


def check_blobs(bundle: Path) -> None:
    files = blobs(bundle)
    refused = [f"{p} ({s / 1e6:.1f} MB)" for p, (s, _) in files.items() if s > LIMIT]
    refused += [f"{p} (binary)" for p, (_, head) in files.items() if b"\0" in head]
    if refused:
        raise CheckFailed("stored as plain blobs, which a Space refuses: " + ", ".join(refused))
    lfs = {p for p, (_, head) in files.items() if head.startswith(LFS_POINTER)}
    weights = {p for p in files if p.endswith(".safetensors")}
    if not weights or weights - lfs:
        raise CheckFailed(f"weights not stored through LFS: {sorted(weights - lfs) or 'no *.safetensors at all'}")
    largest = max(s for p, (s, _) in files.items() if p not in lfs)
    ok("blobs", f"{len(files)} files, {len(lfs)} through LFS ({len(weights)} weights), largest plain blob {largest / 1e6:.2f} MB")


def clone(bundle: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    run(["git", *LFS_CONFIG, "clone", "-q", bundle, dest])
    pointers = [p for p in run(["git", "-C", dest, "lfs", "ls-files", "-n"]).splitlines()
                if (dest / p).read_bytes()[:len(LFS_POINTER)] == LFS_POINTER]
    if pointers:
        raise CheckFailed(f"the clone holds LFS pointers instead of files: {pointers[:5]}")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and ".git" not in f.parts)
    ok("clone", f"{dest}: {size / 1e6:.0f} MB checked out, every LFS file real")


def make_venv(app: Path, venv: Path, reuse: bool) -> Path:
    python = venv / "bin" / "python"
    version = front_matter(app / "README.md").get("python_version", "3.10")  # a Space's default
    if reuse and python.exists():
        ok("venv", f"{venv} reused (--reuse-venv)")
        return python
    base = shutil.which(f"python{version}")
    if base is None:
        raise CheckFailed(f"python{version} (README's python_version) is not on this machine")
    shutil.rmtree(venv, ignore_errors=True)
    t0 = time.monotonic()
    run([base, "-m", "venv", venv])
    run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    # requirements.txt alone, from a folder that holds nothing else: how a Space's build sees it.
    alone = venv / "requirements"
    alone.mkdir()
    shutil.copy(app / "requirements.txt", alone / "requirements.txt")
    run([python, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"], cwd=alone)
    t_requirements = time.monotonic() - t0
    # A Space's builder installs `spaces` beside gradio in every gradio Space; with SYSTEM=spaces
    # (set in start_app) gradio's reloader needs it. Nothing of ours comes from it.
    run([python, "-m", "pip", "install", "--quiet", "spaces"])
    run([python, "-m", "pip", "check"])
    size = int(run(["du", "-sb", venv]).split()[0])
    ok("venv", f"python{version}, requirements.txt alone installed in {t_requirements:.0f} s (then `spaces`, as a "
               f"Space's builder adds it), {size / 1e9:.1f} GB, pip check clean")
    return python


def check_system(app: Path) -> None:
    packages = [p for p in (app / "packages.txt").read_text().split() if not p.startswith("#")]
    missing = [p for p in packages if shutil.which(p) is None]
    if missing:
        raise CheckFailed(f"packages.txt names {missing}, not on the PATH: bash scripts/install_system_deps.sh")
    ok("system", f"packages.txt: {', '.join(packages)} on the PATH")


def listening_on_all(port: int) -> bool:
    """Whether some socket listens on 0.0.0.0 or [::] at `port` (the kernel's own table)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port and set(address) == {"0"}:
                return True
    return False


def start_app(app: Path, python: Path, port: int, log: Path) -> subprocess.Popen:
    app_file = front_matter(app / "README.md")["app_file"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"GRADIO_SERVER_NAME": "0.0.0.0", "PORT": str(port), "PYTHONUNBUFFERED": "1",
            "SYSTEM": "spaces", "SPACE_ID": "local/shotstream-space-check"}  # gradio's own Space switches
    t0 = time.monotonic()
    proc = subprocess.Popen([python, app_file], cwd=app, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise CheckFailed(f"`python {app_file}` exited {proc.returncode} before serving:\n{tail(log)}")
        if time.monotonic() - t0 > PAGE_TIMEOUT:
            raise CheckFailed(f"no page at {url} after {PAGE_TIMEOUT} s:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as page:
                if page.status == 200 and b"ShotStream" in page.read():
                    break
        except OSError:
            pass
        time.sleep(1)
    if not listening_on_all(port):
        raise CheckFailed(f"the app serves {url} but does not listen on 0.0.0.0:{port}: a Space could not reach it")
    ok("app", f"`python {app_file}` (GRADIO_SERVER_NAME=0.0.0.0 PORT={port}): page after {time.monotonic() - t0:.0f} s, listening on 0.0.0.0:{port}")
    return proc


def stream_shot(app: Path, python: Path, port: int) -> None:
    """This file's --client mode, run by the venv's python (gradio_client comes with gradio)."""
    out = run([python, app / "scripts" / "space_check.py", "--client", f"http://127.0.0.1:{port}/"], timeout=SHOT_TIMEOUT)
    ok("shot", out.strip())


def client(url: str) -> None:
    from gradio_client import Client

    c = Client(url, verbose=False)
    t0 = time.monotonic()
    status, refused = c.predict(PROMPT, "", 0, api_name="/add_shot")  # (the prompt comes back only if refused)
    if refused != "":
        raise SystemExit(f"/add_shot did not queue the shot: {status}")
    job, segments, t_first = c.submit(api_name="/run"), 0, None
    for video, *_ in job:  # (video segment, storyboard, stats, status, playback state)
        if isinstance(video, str) and video.endswith(".m3u8"):
            segments += 1
            t_first = t_first or time.monotonic() - t0
    story = c.predict(api_name="/download")
    if not segments or not story or Path(story).read_bytes()[4:8] != b"ftyp":
        raise SystemExit(f"no shot streamed: {segments} segments, story file {story!r}")
    print(f"{segments} video segments streamed, first after {t_first:.1f} s, shot done in {time.monotonic() - t0:.1f} s; "
          f"story mp4 {Path(story).stat().st_size / 1e3:.0f} kB")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise CheckFailed("the app did not stop within 30 s of SIGTERM (killed)")
    ok("stop", f"the app ended on SIGTERM (exit {proc.returncode})")


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", type=Path, help="a folder made by scripts/space_bundle.sh")
    p.add_argument("--work", type=Path, default=Path("/tmp/shotstream-space-check"), help="the clone, venv and log go here")
    p.add_argument("--reuse-venv", action="store_true", help="keep the venv of an earlier check (not a fresh install)")
    p.add_argument("--port", type=int, help="default: a free one")
    p.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # step 6, inside the venv
    args = p.parse_args(argv)
    if args.client:
        client(args.client)
        return 0
    if args.bundle is None or not (args.bundle / ".git").is_dir():
        p.error(f"{args.bundle}: not a git repository; build one with `make space-bundle` (scripts/space_bundle.sh)")
    app, log = args.work / "app", args.work / "app.log"
    proc = None
    try:
        check_blobs(args.bundle)
        args.work.mkdir(parents=True, exist_ok=True)
        clone(args.bundle.resolve(), app)
        python = make_venv(app, args.work / "venv", args.reuse_venv)
        check_system(app)
        port = args.port or free_port()
        proc = start_app(app, python, port, log)
        stream_shot(app, python, port)
        stop(proc)
        proc = None
    except (CheckFailed, subprocess.TimeoutExpired) as e:
        print(f"FAIL {e}", file=sys.stderr)
        if proc is not None and log.exists():
            print(f"--- app log ({log}) ---\n{tail(log)}", file=sys.stderr)
        return 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"space check passed: {args.bundle} runs as a Space (venv and clone kept in {args.work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
