"""How the demo's player behaves when generation is slower than real time, in headless Chromium
(not a test: it measures wall time). Decides the page's playback policy (demo/playback.py).

    python -m benchmark.demo_playback                            # -> results/demo/playback.md
    python -m benchmark.demo_playback --speeds 0.5 --policies none buffer --shots 2

For each generation speed (video seconds per wall second; the demo's server paced by
demo.devmodel.SlowedPipeline, on a random model of the tiny preset's streaming geometry: 33-frame
shots at 16 fps in chunks of 9, 12, 12 frames) and each page policy (window.SHOTSTREAM_PLAYBACK):
none (gradio's player as is), buffer (hold playback, saying "buffering", until enough is buffered
to play the rest, at most 3 s), rate (play at the generation speed, at least 0.5x), one story is
typed into a fresh page and played to its end. The page is sampled every 50 ms; reported: Enter
to the first frame playing, interruptions after it (the play head still for > 0.2 s before the
end), their total time, silent ones (no "buffering" shown), hls.js's bufferStalledError count,
and the mean playback rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

RESULTS = Path(__file__).resolve().parents[1] / "results" / "demo"
GEOMETRY = ("model.dim=64", "model.ffn_dim=128", "model.num_heads=2", "model.num_layers=2",
            "video.height=64", "video.width=64")  # fmt: skip  (the tiny preset's frames, fps and chunks)
PROMPTS = ("a red striped star walks left in a snowy field, wide shot", "close-up of the same character spinning",
           "it jumps on the beach", "the same creature walks right in the city")  # fmt: skip
SAMPLER = """() => { window.__samples = []; const t0 = performance.now();
  window.__sampler = setInterval(() => { const v = document.querySelector('#stream video');
    const pb = document.querySelector('#playback [data-state]') || document.querySelector('#playback');
    window.__samples.push([performance.now() - t0, v ? v.currentTime : null, v ? v.paused : null,
                           v ? v.ended : null, v ? v.playbackRate : null, pb ? (pb.dataset.state || '') : '']); }, 50); }"""


def interruptions(samples, still=0.2):
    """[(start ms, length ms, buffering shown)] of the times the play head stood still for more than
    `still` s after it first moved and before the video ended."""
    out, moved, last_t, last_move, signs = [], False, None, None, []
    for ms, t, paused, ended, rate, state in samples:
        if t is None:
            continue
        if ended:  # (a still play head that ends the video is its end, not an interruption)
            break
        if last_t is not None and t > last_t + 1e-4:
            if moved and ms - last_move > still * 1000:
                out.append((last_move, ms - last_move, any(signs)))
            moved, last_move, signs = True, ms, []
        elif moved:
            signs.append(state == "buffering")
        last_t = t if last_t is None or t > last_t else last_t
        if last_move is None and t and t > 0:
            moved, last_move = True, ms
    return out


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def wait_until(page, js, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise TimeoutError(js)
        time.sleep(0.05)


def measure(url, policy, prompts, chromium, timeout=300.0):
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.add_init_script(f"window.SHOTSTREAM_PLAYBACK = {policy!r};")
            stalls = []
            page.on("console", lambda m: stalls.append(1) if "bufferStalledError" in m.text else None)
            page.goto(url)
            box = page.locator("#prompt textarea, #prompt input").first
            box.wait_for(timeout=60_000)
            page.evaluate(SAMPLER)
            box.fill(prompts[0])
            box.press("Enter")
            t_enter = page.evaluate("() => window.__samples.length ? window.__samples.at(-1)[0] : 0")
            for text in prompts[1:]:  # the rest of the story, queued while the first shot streams
                wait_until(page, "() => document.querySelector('#prompt textarea, #prompt input').value === ''")
                box.fill(text)
                box.press("Enter")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not page.evaluate("() => { const v = document.querySelector('#stream video'); return !!(v && v.ended); }"):
                time.sleep(0.2)
            samples = page.evaluate("() => { clearInterval(window.__sampler); return window.__samples; }")
            speed = page.evaluate("() => document.querySelector('#playback [data-state]').dataset.speed")
        finally:
            browser.close()
    first = next((ms for ms, t, *_ in samples if t), None)
    gaps = interruptions(samples)
    rates = [s[4] for s in samples if s[1] and not s[2] and not s[3]]
    return SimpleNamespace(speed=float(speed) if speed else None, first_frame=None if first is None else (first - t_enter) / 1000, interruptions=len(gaps),
                           interrupted=sum(g[1] for g in gaps) / 1000, silent=sum(not g[2] for g in gaps),
                           buffer_stalls=len(stalls), mean_rate=sum(rates) / len(rates) if rates else None,
                           ended=bool(samples) and bool(samples[-1][3]))


def main(argv=None) -> int:
    from shutil import which

    from demo import app as demo_app
    from demo.devmodel import SlowedPipeline, write_dev_checkpoint
    from helpers import free_port  # (tests/ on sys.path below)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speeds", type=float, nargs="+", default=[0.5, 0.8])
    p.add_argument("--policies", nargs="+", default=["none", "buffer", "rate"], choices=["none", "buffer", "rate"])
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300.0, help="s to wait for a story to play to its end")
    p.add_argument("--out", type=Path, default=RESULTS / "playback.md")
    args = p.parse_args(argv)
    chromium = which("chromium") or "/usr/bin/chromium"

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = demo_app.ModelSpec(str(write_dev_checkpoint(tmp, overrides=GEOMETRY)))
        pipe = demo_app.get_pipeline(spec)
        for speed in args.speeds:
            demo_app._PIPELINES[spec] = SlowedPipeline(pipe, speed)  # every story of this server streams at `speed`
            demo = demo_app.build_app(spec)
            port = free_port()
            demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=demo_app.CSS)
            try:
                for policy in args.policies:
                    r = measure(f"http://127.0.0.1:{port}/", policy, PROMPTS[: args.shots], chromium, args.timeout)
                    r.load = os.getloadavg()[0]  # (other processes share these cores: the speed measured says what it did)
                    rows.append((speed, policy, r))
                    print(f"speed {speed}x (measured {fmt(r.speed)}x) {policy:>6}: first frame {fmt(r.first_frame)} s, "
                          f"{r.interruptions} interruptions ({r.interrupted:.1f} s, {r.silent} silent), bufferStalledError "
                          f"{r.buffer_stalls}, mean rate {fmt(r.mean_rate)}, ended {r.ended}", flush=True)
            finally:
                demo.close()
                demo.shotstream.shutdown()
    story = args.shots * 33 / 16
    lines = [
        "# Demo playback when generation is slower than real time",
        "",
        f"`python -m benchmark.demo_playback --speeds {' '.join(map(str, args.speeds))} --shots {args.shots}` "
        f"(headless Chromium, a {args.shots}-shot story of {story:.2f} s of video typed into a fresh page; "
        "speed = video seconds generated per wall second, the server paced by demo.devmodel.SlowedPipeline). "
        "Interruptions: the play head still for > 0.2 s after the first frame, before the end; silent: no "
        "\"buffering\" shown meanwhile. One run per row on a shared 2-core machine: the timings are noisy.",
        "",
        f"| speed asked | speed measured | policy | first frame (s) | interruptions | interrupted (s) | silent | bufferStalledError | mean rate | load (1 min, {os.cpu_count()} cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for speed, policy, r in rows:
        lines.append(f"| {speed:g}x | {fmt(r.speed)}x | {policy} | {fmt(r.first_frame)} | {r.interruptions} | {r.interrupted:.1f} | "
                     f"{r.silent} | {r.buffer_stalls} | {fmt(r.mean_rate)} | {r.load:.1f} |{'' if r.ended else ' did not end in time'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    raise SystemExit(main())
