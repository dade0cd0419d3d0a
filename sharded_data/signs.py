"""Signs and signers of the synthetic sign language, and the numpy renderer that turns a sentence into video.

A *sign* is what a word looks like, the same for every signer: the dominant hand takes a hand shape (which
may change halfway), starts at a place on the body, moves along a path (line, arc, circle, repeated tap,
zigzag) to an end place while its orientation turns, and the other hand rests, mirrors it, or holds a
static base shape. A word's sign is derived from a hash of the word itself (`sign_for_word`), so any text
can be signed and the same word always gets the same sign, independent of corpus, seed or vocabulary.

A *signer* (`SignerStyle`) is how a person looks and moves: skin, clothes, hair and background colours,
background texture, body scale and position in the frame, hand size, speed (frames per word) and camera
noise. `render_sentence` concatenates the words' signs with short transitions (hands moving from the end
of one sign to the start of the next; from and back to a rest pose at the ends) and draws each frame:
background, torso, head, then arms and hands with anti-aliased edges, so that shapes smaller than a pixel
still change the image. All drawing is vectorised over frames with numpy.

Coordinates: body space is (x, y) with y in frame heights from the top and x in frame heights from the
frame's centre line plus 0.5, so the figure keeps its proportions in non-square frames. The dominant hand
is the signer's right, which appears on the viewer's left (x < 0.5).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

# Places on the body where a sign starts or ends (body space, signer at scale 1).
LOCATIONS: tuple[tuple[float, float], ...] = (
    (0.50, 0.17),  # forehead
    (0.41, 0.30),  # right cheek
    (0.59, 0.30),  # left cheek
    (0.50, 0.42),  # chin
    (0.30, 0.55),  # right shoulder
    (0.68, 0.56),  # left shoulder
    (0.50, 0.62),  # chest
    (0.37, 0.70),  # right chest
    (0.50, 0.82),  # belly
    (0.17, 0.70),  # beside the body
    (0.24, 0.28),  # raised beside the head
    (0.33, 0.88),  # low, in front
)
MOTIONS = ("line", "arc", "circle", "tap", "zigzag")
TWO_HAND_MODES = ("rest", "mirror", "base")
ORIENTATIONS = (-np.pi / 2, -np.pi / 4, 0.0, np.pi / 4, -3 * np.pi / 4)  # 0 = fingers point right, -pi/2 = up
TWISTS = (0.0, 0.0, np.pi / 2, -np.pi / 2)

# Hand shapes: up to five fingers, each (angle relative to the hand's orientation, length in palm radii);
# length 0 = finger folded. Index order: thumb, index, middle, ring, little.
HAND_SHAPES: dict[str, tuple[tuple[float, float], ...]] = {
    "fist": ((-1.3, 0.0), (-0.3, 0.0), (0.0, 0.0), (0.3, 0.0), (0.6, 0.0)),
    "flat": ((-0.25, 1.6), (-0.1, 1.9), (0.0, 2.0), (0.1, 1.9), (0.22, 1.6)),
    "spread": ((-1.3, 1.3), (-0.5, 1.9), (-0.1, 2.0), (0.3, 1.9), (0.75, 1.5)),
    "point": ((-1.3, 0.0), (0.0, 2.2), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)),
    "vee": ((-1.3, 0.0), (-0.35, 2.0), (0.35, 2.0), (0.0, 0.0), (0.0, 0.0)),
    "thumb": ((-1.57, 1.8), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)),
    "horns": ((-1.2, 1.4), (-0.3, 2.0), (0.0, 0.0), (0.0, 0.0), (0.55, 1.7)),
    "claw": ((-1.0, 0.9), (-0.45, 1.0), (-0.1, 1.0), (0.25, 1.0), (0.6, 0.9)),
}
SHAPE_NAMES = tuple(HAND_SHAPES)
_FINGERS = np.array([HAND_SHAPES[name] for name in SHAPE_NAMES], dtype=np.float32)  # [shapes, 5, 2]

REST_RIGHT = (0.30, 0.97)
REST_LEFT = (0.70, 0.97)
SHOULDERS = ((0.33, 0.55), (0.67, 0.55))
BODY_PIVOT = (0.5, 0.6)  # a signer's scale acts around this point
PALM_RADIUS = 0.05  # frame heights, at hand size 1
FINGER_RADIUS = 0.016
ARM_RADIUS = 0.035


def stable_seed(*parts: object) -> int:
    """A seed from any values that is the same in every process and Python run (unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# ------------------------------------------------------------------------------------------------ signs


@dataclass(frozen=True)
class Sign:
    """What one word looks like (indices into the tables above)."""

    start: int
    end: int
    motion: str
    shape_start: int
    shape_end: int
    orientation: float
    twist: float
    bend: float  # arc bulge / circle direction / zigzag phase: -1 or 1
    other_hand: str
    base_shape: int


@functools.lru_cache(maxsize=65536)
def sign_for_word(word: str) -> Sign:
    """The word's sign, a pure function of the word (lower-cased)."""
    rng = np.random.default_rng(stable_seed("sign", word.lower()))
    start = int(rng.integers(len(LOCATIONS)))
    end = int(rng.choice([i for i in range(len(LOCATIONS)) if i != start]))
    shape_start = int(rng.integers(len(SHAPE_NAMES)))
    # A third of the signs change hand shape halfway (like opening or closing the hand).
    shape_end = int(rng.integers(len(SHAPE_NAMES))) if rng.random() < 0.33 else shape_start
    return Sign(
        start=start,
        end=end,
        motion=str(rng.choice(MOTIONS)),
        shape_start=shape_start,
        shape_end=shape_end,
        orientation=float(rng.choice(ORIENTATIONS)),
        twist=float(rng.choice(TWISTS)),
        bend=float(rng.choice([-1.0, 1.0])),
        other_hand=str(rng.choice(TWO_HAND_MODES, p=[0.5, 0.25, 0.25])),
        base_shape=int(rng.integers(len(SHAPE_NAMES))),
    )


def dominant_path(sign: Sign, phase: np.ndarray) -> np.ndarray:
    """Dominant-hand positions [T, 2] (body space) at phases in [0, 1]."""
    a, b = np.array(LOCATIONS[sign.start]), np.array(LOCATIONS[sign.end])
    t = phase[:, None]
    direction = b - a
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-9)
    if sign.motion == "line":
        return a + direction * t
    if sign.motion == "arc":
        return a + direction * t + normal * sign.bend * 0.12 * np.sin(np.pi * t)
    if sign.motion == "circle":  # one turn around the start, then a short move toward the end
        angle = sign.bend * 2 * np.pi * t
        loop = 0.08 * np.concatenate([np.cos(angle) - 1, np.sin(angle)], axis=1)
        return a + loop + direction * 0.3 * t
    if sign.motion == "tap":  # start -> end -> start -> end
        return a + direction * (0.5 - 0.5 * np.cos(3 * np.pi * t))
    if sign.motion == "zigzag":
        return a + direction * t + normal * 0.06 * np.sin(4 * np.pi * t + (sign.bend > 0) * np.pi)
    raise ValueError(f"unknown motion {sign.motion!r}")


@dataclass
class HandTrack:
    """Both hands over time: positions [T, 2] (body space), shape indices [T], orientations [T] (radians)."""

    right: np.ndarray
    left: np.ndarray
    right_shape: np.ndarray
    left_shape: np.ndarray
    right_angle: np.ndarray
    left_angle: np.ndarray

    @classmethod
    def concatenate(cls, tracks: list["HandTrack"]) -> "HandTrack":
        return cls(*(np.concatenate([getattr(t, f) for t in tracks]) for f in cls.__dataclass_fields__))


def sign_track(sign: Sign, n_frames: int) -> HandTrack:
    phase = np.linspace(0.0, 1.0, n_frames)
    right = dominant_path(sign, phase)
    right_shape = np.where(phase < 0.5, sign.shape_start, sign.shape_end)
    right_angle = sign.orientation + sign.twist * phase
    if sign.other_hand == "mirror":
        left = np.stack([1.0 - right[:, 0], right[:, 1]], axis=1)
        left_shape, left_angle = right_shape, np.pi - right_angle
    elif sign.other_hand == "base":  # a static hand at chest height, mirrored to the dominant start
        x_start = LOCATIONS[sign.start][0]
        left = np.tile([max(0.56, 1.0 - x_start), 0.66], (n_frames, 1))
        left_shape, left_angle = np.full(n_frames, sign.base_shape), np.full(n_frames, np.pi + 0.6)
    else:
        left = np.tile(REST_LEFT, (n_frames, 1))
        left_shape, left_angle = np.zeros(n_frames, int), np.full(n_frames, -np.pi / 2)
    return HandTrack(right, left, right_shape, left_shape, right_angle, left_angle)


def rest_track(n_frames: int) -> HandTrack:
    return HandTrack(
        np.tile(REST_RIGHT, (n_frames, 1)), np.tile(REST_LEFT, (n_frames, 1)),
        np.zeros(n_frames, int), np.zeros(n_frames, int),
        np.full(n_frames, -np.pi / 2), np.full(n_frames, -np.pi / 2),
    )


def transition(before: HandTrack, after: HandTrack, n_frames: int) -> HandTrack:
    """Hands moving from the last frame of `before` to the first of `after` (frames strictly between)."""
    t = np.arange(1, n_frames + 1)[:, None] / (n_frames + 1)
    mix = lambda f: (1 - t) * getattr(before, f)[-1] + t * getattr(after, f)[0]  # noqa: E731
    return HandTrack(
        mix("right"), mix("left"),
        np.full(n_frames, after.right_shape[0]), np.full(n_frames, after.left_shape[0]),
        mix("right_angle")[:, 0], mix("left_angle")[:, 0],
    )


# ---------------------------------------------------------------------------------------------- signers


@dataclass(frozen=True)
class SignerStyle:
    """How one signer looks and moves. Colours are RGB in [0, 255]."""

    name: str
    skin: tuple[float, float, float]
    clothes: tuple[float, float, float]
    hair: tuple[float, float, float]
    background: tuple[float, float, float]
    background_kind: int  # 0 flat, 1 vertical gradient, 2 stripes, 3 blotches
    background_seed: int
    scale: float
    offset: tuple[float, float]
    hand_size: float
    speed: float  # multiplies frames per word (1.2 = slower signer, more frames)
    noise: float  # std of gaussian pixel noise


SKIN_TONES = np.array([[255, 224, 196], [234, 192, 160], [198, 144, 108], [150, 100, 70], [96, 64, 44]], float)


# The look every signer shares at signer_variation 0 (a studio with one uniformed presenter).
NEUTRAL_LOOK = dict(skin=(198.0, 144.0, 108.0), clothes=(40.0, 60.0, 110.0), hair=(60.0, 45.0, 30.0),
                    background=(215.0, 215.0, 205.0))


def make_signer(index: int, seed: int, variation: float = 1.0) -> SignerStyle:
    """Signer `index` of the corpus with seed `seed`.

    `variation` is the signer nuisance: it scales the differences in body size, position, hand size, speed
    and camera noise, and below 1 it also blends skin, clothes, hair and background towards one shared look
    (at 0 every signer looks and moves alike, with a plain background). Above 1 colours stay as at 1.
    """
    rng = np.random.default_rng(stable_seed("signer", seed, index))
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(tone)
    skin = SKIN_TONES[low] + (tone - low) * (SKIN_TONES[min(low + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[low])

    def colour_far_from(reference: np.ndarray, lo: float, hi: float) -> np.ndarray:
        for _ in range(100):  # keep clothes and background distinct from the skin, so hands stay visible
            colour = rng.uniform(lo, hi, 3)
            if np.abs(colour - reference).sum() > 160:
                return colour
        return 255.0 - reference

    clothes = colour_far_from(skin, 0, 200)
    background = colour_far_from(skin, 20, 255)
    hair = rng.uniform(10, 120, 3)
    v = variation
    mix = min(v, 1.0)

    def look(own: np.ndarray, part: str) -> tuple[float, float, float]:
        return _rgb(mix * own + (1.0 - mix) * np.asarray(NEUTRAL_LOOK[part]))

    background_kind = int(rng.integers(4))
    return SignerStyle(
        name=f"signer{index:02d}",
        skin=look(skin, "skin"),
        clothes=look(clothes, "clothes"),
        hair=look(hair, "hair"),
        background=look(background, "background"),
        background_kind=background_kind if v >= 0.5 else 0,
        background_seed=int(rng.integers(2**31)),
        scale=float(1.0 + v * rng.uniform(-0.1, 0.1)),
        offset=(float(v * rng.uniform(-0.06, 0.06)), float(v * rng.uniform(-0.04, 0.04))),
        hand_size=float(1.0 + v * rng.uniform(-0.12, 0.12)),
        speed=float(np.exp(v * rng.uniform(-0.2, 0.2))),
        noise=float(v * rng.uniform(1.0, 6.0)),
    )


def _rgb(colour: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(c), 1) for c in colour)  # plain floats: a stable repr (the writer digests it)


# --------------------------------------------------------------------------------------------- timeline


def sentence_track(
    words: Sequence[str], style: SignerStyle, frames_per_word: int, transition_frames: int, rng: np.random.Generator
) -> HandTrack:
    """The hands' whole timeline: rest -> sign 1 -> transition -> sign 2 ... -> rest."""
    pieces = [rest_track(1)]
    for word in words:
        # Per-sample jitter of +-1 frame: one signer never signs a word twice with exactly the same timing.
        n_frames = max(2, int(round(frames_per_word * style.speed)) + int(rng.integers(-1, 2)))
        track = sign_track(sign_for_word(word), n_frames)
        pieces.append(transition(pieces[-1], track, transition_frames))
        pieces.append(track)
    final = rest_track(1)
    pieces.append(transition(pieces[-1], final, transition_frames))
    pieces.append(final)
    return HandTrack.concatenate(pieces)


def sentence_length(n_words: int, frames_per_word: int, transition_frames: int, speed: float = 1.0) -> int:
    """Expected number of frames of a sentence (without the +-1 frame jitter per word)."""
    per_word = max(2, int(round(frames_per_word * speed)))
    return 2 + n_words * per_word + (n_words + 1) * transition_frames


# --------------------------------------------------------------------------------------------- drawing


class Canvas:
    """Pixel grid of one frame size with body-space -> pixel conversion for one signer."""

    def __init__(self, height: int, width: int, style: SignerStyle):
        self.height, self.width, self.style = height, width, style
        self.ys = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centres
        self.xs = np.arange(width, dtype=np.float32)[None, :] + 0.5

    def to_pixels(self, points) -> np.ndarray:
        """Body-space points [..., 2] -> pixel (x, y) float32, with the signer's scale and offset applied."""
        pivot = np.asarray(BODY_PIVOT)
        p = pivot + self.style.scale * (np.asarray(points, float) - pivot) + np.asarray(self.style.offset)
        return np.stack([self.width / 2 + (p[..., 0] - 0.5) * self.height, p[..., 1] * self.height], -1).astype(np.float32)

    def length(self, body_length: float) -> float:
        return body_length * self.style.scale * self.height


def ellipse_coverage(xs, ys, centre, rx: float, ry: float, angle=0.0) -> np.ndarray:
    """Anti-aliased coverage of an ellipse on pixel-centre grids xs [..., 1, W], ys [..., H, 1].

    centre [..., 2] and angle [...] broadcast against the leading dimensions; radii in pixels.
    """
    centre = np.asarray(centre, np.float32)
    angle = np.asarray(angle, np.float32)[..., None, None]
    dx, dy = xs - centre[..., 0, None, None], ys - centre[..., 1, None, None]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (dx * cos + dy * sin) / rx, (dy * cos - dx * sin) / ry
    distance = (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)  # about the pixels outside the edge
    return np.clip(0.5 - distance, 0.0, 1.0)


def capsule_coverage(xs, ys, a, b, radius: float) -> np.ndarray:
    """Anti-aliased coverage of thick segments a -> b ([..., 2] pixels) on grids xs [..., 1, W], ys [..., H, 1].

    A zero-length segment covers nothing (a folded finger).
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    abx, aby = (b - a)[..., 0, None, None], (b - a)[..., 1, None, None]
    length2 = abx * abx + aby * aby
    px, py = xs - a[..., 0, None, None], ys - a[..., 1, None, None]
    t = np.clip((px * abx + py * aby) / np.maximum(length2, 1e-6), 0.0, 1.0)
    ex, ey = px - t * abx, py - t * aby
    coverage = np.clip(radius + 0.5 - np.sqrt(ex * ex + ey * ey), 0.0, 1.0)
    return coverage * (length2 > 1e-6)


def paint(image: np.ndarray, coverage: np.ndarray, colour) -> None:
    """Alpha-composite a colour over image [..., H, W, 3] in place."""
    alpha = coverage[..., None]
    image *= 1.0 - alpha
    image += alpha * np.asarray(colour, np.float32)


def background(canvas: Canvas) -> np.ndarray:
    style, h, w = canvas.style, canvas.height, canvas.width
    rng = np.random.default_rng(style.background_seed)
    base = np.asarray(style.background, np.float32)
    if style.background_kind == 1:
        shade = 1.0 + 0.35 * (canvas.ys / h - 0.5) * np.ones((1, w), np.float32)
    elif style.background_kind == 2:
        period = rng.uniform(4, 10) * h / 32
        shade = 1.0 + 0.12 * np.sin(2 * np.pi * canvas.xs / period + rng.uniform(0, 6)) * np.ones((h, 1), np.float32)
    elif style.background_kind == 3:  # smooth blotches: a coarse random grid, bilinearly upsampled
        grid = rng.uniform(0.8, 1.2, (5, 5))
        gy, gx = (canvas.ys[:, 0] / h) * 4, (canvas.xs[0] / w) * 4
        rows = np.stack([np.interp(gx, np.arange(5), grid[i]) for i in range(5)])  # [5, W]
        shade = np.stack([np.interp(gy, np.arange(5), rows[:, j]) for j in range(w)], axis=1)
    else:
        shade = np.ones((h, w))
    return np.clip(shade[..., None] * base, 0, 255).astype(np.float32)


def body(canvas: Canvas) -> np.ndarray:
    """The static picture of the signer (background, torso, neck, head, hair): float32 [H, W, 3]."""
    style, xs, ys, size = canvas.style, canvas.xs, canvas.ys, canvas.length
    image = background(canvas)
    skin = np.asarray(style.skin)
    paint(image, ellipse_coverage(xs, ys, canvas.to_pixels([0.5, 0.98]), size(0.30), size(0.42)), style.clothes)
    neck_top, neck_bottom = canvas.to_pixels([[0.5, 0.36], [0.5, 0.55]])
    paint(image, capsule_coverage(xs, ys, neck_top, neck_bottom, size(0.045)), skin * 0.9)
    paint(image, ellipse_coverage(xs, ys, canvas.to_pixels([0.5, 0.29]), size(0.105), size(0.13)), skin * 0.92)
    paint(image, ellipse_coverage(xs, ys, canvas.to_pixels([0.5, 0.2]), size(0.11), size(0.06)), style.hair)
    return image


def hand_coverage(canvas: Canvas, centres: np.ndarray, shapes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Coverage [T, H, W] of one hand per frame (palm + fingers).

    Drawn on a small window around each hand and pasted into the frame: a hand covers a few percent of
    the frame, and computing its fields over the whole frame was most of the rendering time.
    """
    palm = canvas.length(PALM_RADIUS * canvas.style.hand_size)
    finger_radius = max(canvas.length(FINGER_RADIUS * canvas.style.hand_size), 0.35)
    reach = int(np.ceil(palm * (1.0 + _FINGERS[..., 1].max()) + finger_radius + 2))
    window = 2 * reach
    corner = np.floor(centres).astype(int) - reach  # [T, 2] top-left pixel (x, y) of each window
    steps = np.arange(window)
    xs = (corner[:, 0, None] + steps + 0.5).astype(np.float32)[:, None, None, :]  # [T, 1, 1, P]
    ys = (corner[:, 1, None] + steps + 0.5).astype(np.float32)[:, None, :, None]  # [T, 1, P, 1]

    fingers = _FINGERS[shapes]  # [T, 5, 2]
    finger_angle = angles[:, None] + fingers[..., 0]
    direction = np.stack([np.cos(finger_angle), np.sin(finger_angle)], -1)  # [T, 5, 2]
    base = centres[:, None] + direction * palm * 0.5
    extended = fingers[..., 1:2] > 0
    tip = np.where(extended, centres[:, None] + direction * palm * (1.0 + fingers[..., 1:2]), base)
    patch = capsule_coverage(xs, ys, base, tip, finger_radius).max(1)  # [T, P, P]
    patch = np.maximum(patch, ellipse_coverage(xs[:, 0], ys[:, 0], centres, palm, palm * 0.85, angles))

    # Paste the windows into frames padded by the window size (hands may leave the frame).
    t = len(centres)
    padded = np.zeros((t, canvas.height + 2 * window, canvas.width + 2 * window), np.float32)
    rows = np.clip(corner[:, 1, None] + window + steps, 0, canvas.height + window)[:, :, None]
    cols = np.clip(corner[:, 0, None] + window + steps, 0, canvas.width + window)[:, None, :]
    padded[np.arange(t)[:, None, None], rows, cols] = patch
    return padded[:, window:window + canvas.height, window:window + canvas.width]


def draw_hands(canvas: Canvas, frames: np.ndarray, track: HandTrack) -> None:
    """Arms and hands of both sides over frames [T, H, W, 3], in place."""
    style = canvas.style
    sleeve = np.asarray(style.clothes) * 0.7 + 20  # darker than the torso, so arms in front of it show
    hand_colour = np.minimum(np.asarray(style.skin) * 1.08 + 10, 255)  # lighter than the face
    sides = [(track.right, track.right_shape, track.right_angle, -1.0), (track.left, track.left_shape, track.left_angle, 1.0)]
    arms, hands = [], []
    for side, (positions, shapes, angles, outward) in enumerate(sides):
        hand = canvas.to_pixels(positions)  # [T, 2]
        shoulder = np.broadcast_to(canvas.to_pixels(SHOULDERS[side]), hand.shape)
        # The elbow sits below and outside the midpoint between shoulder and hand.
        elbow = (shoulder + hand) / 2 + np.array([outward * canvas.length(0.06), canvas.length(0.08)], np.float32)
        arms.append((np.stack([shoulder, elbow], 1), np.stack([elbow, hand], 1)))
        hands.append(hand_coverage(canvas, hand, shapes, angles))
    # Arms are evaluated only inside the box that holds every arm point of the video (plus the arm's width).
    radius = canvas.length(ARM_RADIUS)
    points = np.concatenate([np.concatenate(pair, 1).reshape(-1, 2) for pair in arms])
    x0, y0 = np.maximum(np.floor(points.min(0) - radius - 1).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(points.max(0) + radius + 2).astype(int), [canvas.width, canvas.height])
    if x1 > x0 and y1 > y0:
        xs, ys = canvas.xs[:, x0:x1], canvas.ys[y0:y1]
        coverage = np.maximum(*(capsule_coverage(xs, ys, a, b, radius).max(1) for a, b in arms))
        paint(frames[:, y0:y1, x0:x1], coverage, sleeve)
    paint(frames, np.maximum(*hands), hand_colour)


def render_sentence(
    words: Sequence[str],
    style: SignerStyle,
    frame_size: tuple[int, int],
    frames_per_word: int,
    transition_frames: int,
    seed: int,
) -> np.ndarray:
    """The video of `style` signing `words`: uint8 [T, H, W, 3]. Same arguments -> same pixels."""
    if not words:
        raise ValueError("cannot sign an empty sentence")
    rng = np.random.default_rng(seed)
    track = sentence_track(words, style, frames_per_word, transition_frames, rng)
    # A small per-sample shift of the whole signer: two recordings by one signer are never pixel-identical.
    dx, dy = rng.normal(0.0, 0.008, 2)
    style = replace(style, offset=(style.offset[0] + dx, style.offset[1] + dy))
    canvas = Canvas(*frame_size, style)
    frames = np.repeat(body(canvas)[None], len(track.right), axis=0)
    draw_hands(canvas, frames, track)
    if style.noise > 0:
        frames += rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(style.noise)
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)
