"""The demo's model card: which model is loaded, what it can draw, its limits, and a check of a
prompt's words against what the tiny model knows. Pure functions (tests/test_demo.py); the app
only shows their output.

Why a vocabulary check: a StoryWorld model has seen only the words its captions are made of
(shotstream/world/vocab.py and the caption templates of shotstream/world/story.py). Any other
word is silently ignored ("a golden retriever playing piano" gives a yellow shape), so the page
says which words will be ignored before the prompt is queued.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from shotstream.importer import COMPONENTS
from shotstream.world import vocab

PAPER_URL = "https://arxiv.org/abs/2603.25746"
# Words of the caption templates (shotstream/world/story.py make_caption) beside the vocab tables.
TEMPLATE_WORDS = ("a", "an", "of", "creature", "next", "to", "beside", "while", "watches")


def _words(text: str) -> list[str]:
    """Lower-case words of `text` (letters, with inner hyphens or apostrophes: "close-up")."""
    return re.findall(r"[a-z]+(?:['-][a-z]+)*", text.lower())


def storyworld_vocabulary() -> frozenset[str]:
    """Every word a StoryWorld caption or global caption can contain."""
    tables = (vocab.SHAPE_WORDS, vocab.COLOUR_WORDS, vocab.PATTERN_WORDS, vocab.SCENE_WORDS,
              vocab.FRAMING_WORDS, vocab.ACTION_VERBS, vocab.ACTION_GERUNDS)
    phrases = [p for table in tables for synonyms in table.values() for p in synonyms]
    phrases += [*vocab.PRONOUNS, *vocab.GLOBAL_CAPTIONS, *TEMPLATE_WORDS]
    return frozenset(w for p in phrases for w in _words(p))


VOCABULARY = storyworld_vocabulary()


def unknown_words(prompt: str, vocabulary: frozenset[str] = VOCABULARY) -> list[str]:
    """Words of `prompt` outside `vocabulary`, lower-cased, each once, in order of appearance."""
    return list(dict.fromkeys(w for w in _words(prompt) if w not in vocabulary))


def vocabulary_hint(prompt: str, storyworld: bool = True) -> str:
    """The line under the prompt box: which words the tiny model will ignore ("" when none)."""
    if not storyworld or not prompt:
        return ""
    unknown = unknown_words(prompt)
    if not unknown:
        return ""
    listed = ", ".join(html.escape(w) for w in unknown)
    return (f"⚠ Not in the tiny model's vocabulary, ignored: <b>{listed}</b>. "
            "It knows only the words under 'what it can draw'.")


def chips() -> dict[str, list[str]]:
    """The vocabulary to show, by kind: the canonical word of each label (synonyms work too)."""
    first = lambda table: [synonyms[0] for synonyms in table.values()]  # noqa: E731
    return {
        "shapes": first(vocab.SHAPE_WORDS),
        "colours": first(vocab.COLOUR_WORDS),
        "patterns": first(vocab.PATTERN_WORDS),
        "scenes": first(vocab.SCENE_WORDS),
        "framing": first(vocab.FRAMING_WORDS),
        "actions": first(vocab.ACTION_VERBS),
        "memory": ["it", "the same character"],  # a shot that names no identity: drawn from the earlier shots
    }


def chips_html() -> str:
    """The chips as buttons; the page's script (CHIPS_JS) inserts a clicked one into the prompt."""
    rows = []
    for kind, words in chips().items():
        buttons = "".join(f'<button class="chip" type="button" data-word="{html.escape(w, quote=True)}">{html.escape(w)}</button>'
                          for w in words)
        rows.append(f'<div class="chip-row"><span class="chip-kind">{kind}</span>{buttons}</div>')
    return f'<div id="chips">{"".join(rows)}</div>'


# Scoped to the chips' HTML component (gr.HTML css_template), so it travels with it.
CHIPS_CSS = """
#chips .chip-row {margin: 1px 0; line-height: 1.9}
#chips .chip-kind {display: inline-block; width: 5.5em; opacity: .7; font-size: 13px}
#chips button.chip {border: 1px solid var(--border-color-primary); border-radius: 999px; padding: 1px 9px;
  margin: 1px 2px; font-size: 13px; font-weight: normal; line-height: 1.4; cursor: pointer;
  background: var(--background-fill-secondary); color: var(--body-text-color)}
#chips button.chip:hover {border-color: var(--color-accent)}
"""

# Client-side only (no server round trip, so it never races the user's typing): append the word
# to the prompt box and tell gradio the box changed.
CHIPS_JS = """
element.addEventListener('click', (event) => {
  const chip = event.target.closest('button.chip');
  const box = document.querySelector('#prompt textarea, #prompt input');
  if (!chip || !box) return;
  const text = box.value;
  box.value = text + (text && !text.endsWith(' ') ? ' ' : '') + chip.dataset.word;
  box.dispatchEvent(new Event('input', {bubbles: true}));
  box.focus();
});
"""


def is_storyworld_model(path: str | Path) -> bool:
    """A folder in this project's own layout was trained on StoryWorld (the tiny preset or a dev
    model); a folder made by `shotstream import` is a released Wan2.1-based model."""
    return not (Path(path) / COMPONENTS).is_file()


def repository_url(environ=os.environ) -> str | None:
    """Where the source is public: SHOTSTREAM_REPO_URL, else the Hugging Face Space this runs in
    (a Space sets SPACE_ID=owner/name and is itself the repository), else None."""
    url = environ.get("SHOTSTREAM_REPO_URL", "").strip()
    if url:
        return url
    space = environ.get("SPACE_ID", "").strip()
    return f"https://huggingface.co/spaces/{space}/tree/main" if space else None


def model_card(path: str | Path, kind: str, width: int, height: int, frames_per_shot: int, fps: float,
               device: str, dtype: str, shipped: Path | None = None, environ=os.environ) -> str:
    """Markdown: the loaded model, its limits in one sentence, and links."""
    path = Path(path)
    role = {"causal": "causal student, streams chunk by chunk", "bidirectional": "bidirectional teacher, "
            "a shot's chunks arrive together", "rolling": "rolling-window ablation"}.get(kind, kind)
    if shipped is not None and path.resolve().parent == shipped.resolve():
        name = f"the shipped tiny **{path.name}** (`checkpoints/tiny/{path.name}`)"
    else:
        name = f"the model folder `{path}`"
    seconds = frames_per_shot / fps
    lines = [f"**Model:** {name}: {role}; {width}x{height}, {frames_per_shot} frames ({seconds:.1f} s) a shot, "
             f"on {device} ({dtype})."]
    if is_storyworld_model(path):
        lines.append(f"**Limits:** a tiny {width}x{height} model trained on a CPU on StoryWorld, a synthetic world "
                     "of coloured shapes in a few scenes: it draws only the words below and ignores any other "
                     "(a golden retriever becomes a yellow shape).")
    else:
        lines.append("**Limits:** a released Wan2.1-based ShotStream model; prompts are open-vocabulary, "
                     "and a shot takes far longer than real time without a GPU.")
    repo = repository_url(environ)
    links = [f"[paper: ShotStream, arXiv 2603.25746]({PAPER_URL})"]
    links.append(f"[source]({repo})" if repo else "source: the repository this app runs from (`demo/app.py`)")
    lines.append(" · ".join(links))
    return "\n\n".join(lines)
