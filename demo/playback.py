"""What the player shows: the shot playing (from the player's position, not the shot generating)
and smooth playback when generation is slower than real time.

The server half (`Timeline`) tells the page, with every streamed chunk, where each shot of the run
starts in the run's video, how fast the run generates and how much is left to generate. The page
half (`PLAYBACK_JS`, in a gr.HTML under the player) reads the player's position against it and
names the shot playing; and while generation is live it holds playback until enough is buffered to
play the rest without stalling (or as much as the player buffers), saying "buffering" meanwhile,
instead of running into the end of the buffer (hls.js's bufferStalledError: a frozen frame, no
sign). Measured in headless Chromium against the alternatives (no policy, lower playback rate):
results/demo/playback.md (`python -m demo.playback_check`).
"""

from __future__ import annotations

import json
import re
import time

_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")  # ANSI sequences, C0 controls

# Seconds of video ahead of the play head. LOW: about to stall (a tick is 0.1 s), so hold.
# CAP: the most the page waits for; gradio's hls.js loads fragments only while less than 4 s is
# buffered ahead (maxBufferLength), so a larger target could never be reached.
LOW, CAP = 0.15, 3.0
MIN_RATE = 0.5  # the 'rate' policy (measured, not the default) never plays slower than this


def plain_text(text: str) -> str:
    """User text with control characters and ANSI escapes dropped (the page shows the rest as typed)."""
    return _CONTROL.sub("", text)


def needed_buffer(speed: float | None, remaining: float) -> float:
    """Seconds to buffer before playing so that `remaining` seconds still to generate, arriving at
    `speed` x real time, play without a stall: from buffer B at speed r < 1 the play head catches up
    with generation after B / (1 - r) s, and generation ends after remaining / r s. At most CAP.
    (The same formula is in PLAYBACK_JS, which applies it.)"""
    if speed is None or speed >= 1 or remaining <= 0:
        return LOW
    return min(CAP, max(LOW, remaining * (1 - speed) / max(speed, 1e-3)))


class Timeline:
    """One run's video as the page's player sees it. A run's segments play as one HLS stream whose
    clock starts at 0 and advances by each segment's frames / fps."""

    def __init__(self, fps: float, clock=time.perf_counter):
        self.fps, self.clock = fps, clock  # (the session's clock: chunks carry perf_counter times)
        self.shots: list[tuple[float, int, str]] = []  # (start s in the run's video, shot index, caption)
        self.seconds = 0.0  # video generated so far in this run
        self.t0: float | None = None  # when the run's first shot started generating

    def add(self, chunk) -> None:
        if self.t0 is None:
            self.t0 = chunk.t_start
        if chunk.chunk == 0:
            self.shots.append((round(self.seconds, 4), chunk.shot, plain_text(chunk.caption)))
        self.seconds += len(chunk.frames) / self.fps

    def speed(self) -> float | None:
        """Video seconds generated per wall second since the run started generating (1 = real time),
        every wait included: model, decoding, encoding, gradio's muxing of the previous segment (it
        resumes the run only after), the gap between shots."""
        if self.t0 is None or not self.seconds:
            return None
        return self.seconds / max(self.clock() - self.t0, 1e-6)

    def state(self, generating: int | None = None, remaining: float = 0.0) -> str:
        """The page's playback state as JSON: shot starts (1-based shots), the shot generating (None
        once the run is over: play out, never hold), the speed, and the seconds of video still to
        generate in this run (the rest of the shot and the queued shots)."""
        speed = self.speed()
        return json.dumps({
            "shots": [[t, k + 1, caption] for t, k, caption in self.shots],
            "generating": None if generating is None else generating + 1,
            "speed": None if speed is None else round(speed, 3),
            "remaining": round(remaining, 4) if generating is not None else 0.0,
        })  # fmt: skip


# The page half. props.value is Timeline.state() ('' when there is nothing to play). The player
# is gradio's <video> in #stream, fed by hls.js; its src (a MediaSource blob) changes with each run.
# window.SHOTSTREAM_PLAYBACK ('buffer', the default; 'rate'; 'none') exists for the measurement.
PLAYBACK_HTML = '<div class="playback"><span class="playing"></span> <span class="buffering"></span></div>'
PLAYBACK_CSS = """
.playback {min-height: 1.4em; font-variant-numeric: tabular-nums}
.playback .buffering {color: var(--color-accent); font-weight: 600}
"""
PLAYBACK_JS = (
    "const LOW = " + str(LOW) + ", CAP = " + str(CAP) + ", MIN_RATE = " + str(MIN_RATE) + ";\n"
    + """
const policy = window.SHOTSTREAM_PLAYBACK || 'buffer';
let src = null, started = false, holding = false, stalled = false;

function ahead(v) {  // seconds buffered past the play head
  for (let i = 0; i < v.buffered.length; i++)
    if (v.buffered.start(i) <= v.currentTime + 0.1 && v.buffered.end(i) > v.currentTime)
      return v.buffered.end(i) - v.currentTime;
  return 0;
}
function needed(s) {  // demo/playback.py needed_buffer
  if (!s.speed || s.speed >= 1 || s.remaining <= 0) return LOW;
  return Math.min(CAP, Math.max(LOW, s.remaining * (1 - s.speed) / Math.max(s.speed, 1e-3)));
}
function show(state, playing, sign, speed) {
  element.dataset.state = state;  // (for tests and benchmark.demo_playback)
  element.dataset.speed = speed || '';
  const p = element.querySelector('.playing'), b = element.querySelector('.buffering');
  if (p && p.textContent !== playing) p.textContent = playing;
  if (b && b.textContent !== sign) b.textContent = sign;
}
function tick() {
  const v = document.querySelector('#stream video');
  let s = null;
  try { s = props.value ? JSON.parse(props.value) : null; } catch (e) { s = null; }
  if (!v || !v.src || !s || !s.shots.length) { holding = false; show('', '', ''); return; }
  if (v.src !== src) { src = v.src; started = false; holding = false; stalled = false; }
  const live = s.generating !== null, left = ahead(v);
  if (policy === 'rate') v.playbackRate = live && s.speed ? Math.max(MIN_RATE, Math.min(1, s.speed)) : 1;
  if (policy === 'buffer') {
    if (holding && !v.paused) holding = false;  // the viewer pressed play: theirs to decide
    if (!holding && live && !v.paused && !v.ended && (left < LOW || (!started && left < needed(s)))) {
      holding = true;
      v.pause();
    } else if (holding && (!live || left >= needed(s))) {
      holding = false;
      v.play().catch(() => {});
    }
  }
  if (!v.paused && v.currentTime > 0) started = true;
  let shot = s.shots[0];
  for (const e of s.shots) if (e[0] <= v.currentTime + 1e-3) shot = e;
  const name = 'shot ' + shot[1] + ': ' + shot[2];
  const waiting = holding || (stalled && !v.paused && !v.ended);
  const sign = waiting ? 'buffering' + (s.speed && live ? ' (generating at ' + s.speed.toFixed(2) + 'x real time)' : '') : '';
  if (v.ended) show('ended', 'Played to the end of ' + name, '', s.speed);
  else if (waiting) show('buffering', (started ? 'Playing ' : 'Up first: ') + name + ' \u2014', sign, s.speed);
  else if (v.paused) show('paused', 'Paused at ' + name, '', s.speed);
  else show('playing', 'Playing ' + name, '', s.speed);
}
// Media events do not bubble: listen in the capture phase, on the whole page (the <video> is
// replaced when a run starts); the interval catches what no event announces (buffer growing).
document.addEventListener('waiting', (e) => { if (e.target.closest && e.target.closest('#stream')) { stalled = true; tick(); } }, true);
for (const name of ['playing', 'timeupdate', 'pause', 'ended', 'emptied'])
  document.addEventListener(name, (e) => { if (name === 'playing') stalled = false; tick(); }, true);
setInterval(tick, 100);
watch('value', tick);
"""
)
