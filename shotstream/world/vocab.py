"""StoryWorld vocabulary: the label sets and the words captions use for them.

Labels are identifiers (`"walk_left"`, `"close_up"`); captions are built from the synonym
tables below. The ordered tuples are the label spaces: probes and metrics map a label to its
index with `SHAPES.index(label)` etc., so never reorder them (append only).

Invariant the tests rely on: the scene, action and framing phrases never contain a shape,
colour or pattern word, so a pronoun caption cannot leak the main character's identity.
"""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
PATTERNS = ("solid", "striped", "dotted")
SCENES = ("forest", "beach", "city", "night", "snow", "desert", "underwater")
FRAMINGS = ("wide", "medium", "close_up")
ACTIONS = ("walk_left", "walk_right", "jump", "spin", "bounce", "stay", "shake")

# Exact body colours (RGB). Well separated in hue so identity survives H.264 and a small
# autoencoder; the renderer paints them exactly, so tests can find them pixel for pixel.
COLOUR_RGB = {
    "red": (220, 30, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 235),
    "yellow": (250, 215, 30),
    "purple": (150, 50, 200),
    "orange": (245, 115, 10),
}

# Character size as a fraction of min(H, W): wide ~20 px, medium ~44 px, close-up ~74 px at 128.
FRAMING_SIZE = {"wide": 0.16, "medium": 0.34, "close_up": 0.58}

# ---------------------------------------------------------------------------------------------
# Caption words. The first synonym of each entry is the canonical one.

SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
}
COLOUR_WORDS = {
    "red": ("red", "crimson"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
    "orange": ("orange", "amber"),
}
PATTERN_WORDS = {
    "solid": ("solid", "plain"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dot"),
}
SCENE_WORDS = {
    "forest": ("in a forest", "in the woods", "among the trees"),
    "beach": ("on the beach", "on a sandy beach", "by the shore"),
    "city": ("in the city", "on a city street", "downtown"),
    "night": ("at night", "under the night sky", "in the moonlight"),
    "snow": ("in a snowy field", "in the snow", "on a snowy hill"),
    "desert": ("in the desert", "among the dunes", "on the desert sand"),
    "underwater": ("underwater", "under the sea", "on the sea floor"),
}
FRAMING_WORDS = {  # used as a suffix (", wide shot") or a prefix ("wide shot of ...")
    "wide": ("wide shot", "long shot", "establishing shot"),
    "medium": ("medium shot", "mid shot"),
    "close_up": ("close-up", "close-up shot", "tight close-up"),
}
ACTION_VERBS = {  # third person: "<subject> walks to the left"
    "walk_left": ("walks to the left", "walks left", "strolls to the left", "heads left"),
    "walk_right": ("walks to the right", "walks right", "strolls to the right", "heads right"),
    "jump": ("jumps", "leaps into the air", "jumps up high"),
    "spin": ("spins", "spins around", "twirls"),
    "bounce": ("bounces", "bounces up and down", "hops in place"),
    "stay": ("stands still", "stays still", "waits quietly"),
    "shake": ("shakes", "wiggles", "trembles"),
}
ACTION_GERUNDS = {  # after "close-up of <subject> ..."
    "walk_left": ("walking to the left", "walking left", "strolling to the left", "heading left"),
    "walk_right": ("walking to the right", "walking right", "strolling to the right", "heading right"),
    "jump": ("jumping", "leaping into the air", "jumping up high"),
    "spin": ("spinning", "spinning around", "twirling"),
    "bounce": ("bouncing", "bouncing up and down", "hopping in place"),
    "stay": ("standing still", "staying still", "waiting quietly"),
    "shake": ("shaking", "wiggling", "trembling"),
}
# How a pronoun caption refers to the main character: identity must come from memory.
PRONOUNS = ("it", "the same character", "the creature", "the same creature", "our character")
# Global captions never name the identity either (otherwise a prefixed global caption would
# give away what pronoun shots are supposed to recall from the global context cache).
GLOBAL_CAPTIONS = (
    "a short story about a little creature",
    "the adventures of a small character, told in {n} shots",
    "a little creature travels through the world",
    "one character, many places: a story in {n} shots",
    "a playful creature on a journey",
)

LABEL_SPACES = {
    "shape": SHAPES,
    "colour": COLOURS,
    "pattern": PATTERNS,
    "scene": SCENES,
    "framing": FRAMINGS,
    "action": ACTIONS,
}


def identity_words(shape: str, colour: str, pattern: str) -> tuple[str, ...]:
    """Every caption word that names any of these identity attributes."""
    return SHAPE_WORDS[shape] + COLOUR_WORDS[colour] + PATTERN_WORDS[pattern]
