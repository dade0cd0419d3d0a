"""A small English weather-report grammar: the sentences of the synthetic corpus.

The domain imitates PHOENIX-2014T (German TV weather forecasts): "tomorrow in the north rain and in the
south sun", "temperatures between five and twelve degrees", "good evening dear viewers". Sentences come
from templates whose `{SLOT}`s are filled from word lists; every word is one token (no punctuation), so
the words of a sentence are exactly its signs.

`Grammar.restricted(vocab_size)` gives the sub-grammar with about that many distinct words: it enables
templates in a fixed order and grows the slot lists round-robin, so a small vocabulary still has every
kind of sentence, and a bigger one mostly adds fillers (more places, numbers, weather words). The full
grammar has a few hundred words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

SLOTS: dict[str, tuple[str, ...]] = {
    "DAY": ("tomorrow", "today", "tonight", "later", "soon", "meanwhile", "afterwards", "overnight"),
    "WEEKDAY": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "PART": ("morning", "evening", "afternoon", "night", "noon", "daytime", "midnight", "dawn"),
    "REGION": (
        "north", "south", "east", "west", "northeast", "southwest", "northwest", "southeast", "coast",
        "mountains", "alps", "lowlands", "valleys", "islands", "centre", "interior", "hills", "plains",
        "lakes", "highlands", "border", "uplands", "forest", "sea", "rivers", "moors", "heath", "foothills",
        "bay", "peninsula",
    ),
    "PLACE": (
        "berlin", "hamburg", "munich", "cologne", "frankfurt", "stuttgart", "dresden", "leipzig", "hanover",
        "bremen", "nuremberg", "bavaria", "saxony", "hesse", "thuringia", "brandenburg", "austria",
        "switzerland", "denmark", "poland", "france", "holland", "belgium", "bonn", "kiel", "rostock",
        "potsdam", "mainz", "erfurt", "freiburg", "passau", "augsburg", "essen", "dortmund", "magdeburg",
        "lubeck", "aachen", "trier", "kassel", "ulm", "regensburg", "wurzburg", "schwerin", "saarland",
        "westphalia", "swabia", "franconia", "pomerania", "friesland", "eifel",
    ),
    "WEATHER": (
        "rain", "sun", "snow", "fog", "clouds", "showers", "thunderstorms", "drizzle", "hail", "sleet",
        "frost", "mist", "storms", "gusts", "ice", "sunshine", "lightning", "heat", "haze", "wind",
        "downpours", "flurries", "squalls", "dew", "rainbows", "thaw", "gales", "blizzards", "cloudbursts",
        "drought", "slush",
    ),
    "ADJ": (
        "sunny", "cloudy", "rainy", "windy", "dry", "mild", "cold", "warm", "foggy", "wet", "hot", "cool",
        "friendly", "stormy", "changeable", "clear", "grey", "humid", "frosty", "icy", "freezing", "pleasant",
        "bright", "dull", "overcast", "unsettled", "calm", "fresh", "muggy", "chilly", "gloomy", "sultry",
        "wintry", "summery", "breezy", "damp", "misty", "hazy", "blustery", "balmy", "crisp", "raw",
    ),
    "AMOUNT": (
        "light", "heavy", "strong", "some", "weak", "isolated", "scattered", "frequent", "occasional",
        "brief", "persistent", "thick", "dense", "moderate", "fierce", "gentle", "patchy", "widespread",
        "intense", "steady",
    ),
    "NUMBER": (
        "five", "ten", "two", "eight", "three", "twelve", "one", "fifteen", "four", "twenty", "six", "seven",
        "nine", "eleven", "thirteen", "fourteen", "sixteen", "seventeen", "eighteen", "nineteen",
        "twentyone", "twentytwo", "twentythree", "twentyfour", "twentyfive", "twentysix", "twentyseven",
        "twentyeight", "twentynine", "thirty", "thirtyone", "thirtytwo", "thirtythree", "thirtyfour",
        "thirtyfive", "thirtysix", "thirtyseven", "thirtyeight", "forty", "zero",
    ),
    "DIR": ("west", "east", "north", "south", "northwest", "southeast", "northeast", "southwest"),
    "TREND": ("rise", "fall", "climb", "drop", "sink", "increase", "decrease", "return", "stay", "reach"),
    "MOVE": ("moves", "spreads", "drifts", "shifts", "passes", "travels", "retreats", "advances", "arrives"),
}

# In order of priority: a restricted grammar enables the first ones first (short, frequent forms first).
TEMPLATES: tuple[str, ...] = (
    "{DAY} {ADJ} in the {REGION}",
    "in the {REGION} {AMOUNT} {WEATHER}",
    "{DAY} {WEATHER} and {WEATHER}",
    "temperatures between {NUMBER} and {NUMBER} degrees",
    "{DAY} {AMOUNT} {WEATHER} in the {REGION}",
    "in {PLACE} {NUMBER} degrees",
    "the wind blows {AMOUNT} from the {DIR}",
    "{DAY} in the {REGION} {WEATHER} and in the {REGION} {WEATHER}",
    "in the {PART} {ADJ} and {ADJ}",
    "the {WEATHER} {MOVE} to the {DIR}",
    "temperatures {TREND} to {NUMBER} degrees",
    "{DAY} it stays {ADJ}",
    "at night minus {NUMBER} degrees in the {REGION}",
    "on {WEEKDAY} {ADJ} with {AMOUNT} {WEATHER}",
    "{DAY} {ADJ} weather in {PLACE}",
    "from the {DIR} comes {ADJ} air",
    "{WEATHER} in {PLACE} and {WEATHER} in {PLACE}",
    "the {PART} brings {AMOUNT} {WEATHER}",
    "in the {REGION} it becomes {ADJ}",
    "{WEEKDAY} and {WEEKDAY} {ADJ}",
    "{DAY} {PART} {NUMBER} degrees in {PLACE}",
    "on {WEEKDAY} in the {REGION} {AMOUNT} {WEATHER} and {NUMBER} degrees",
    "{ADJ} and {ADJ} in the {REGION}",
    "in {PLACE} {WEATHER} at {PART}",
)

# Fixed sentences that open and close every broadcast: the corpus repeats these many times ("k sentences
# repeated r times"), like "guten abend liebe zuschauer" in PHOENIX-2014T.
GREETINGS: tuple[str, ...] = (
    "good evening dear viewers",
    "and now the weather",
    "have a nice evening",
    "here is the weather forecast",
    "good night and goodbye",
    "thank you and good night",
    "welcome to the weather",
    "enjoy the weekend",
)

SLOT_PATTERN = re.compile(r"\{([A-Z]+)\}")


def template_words(template: str) -> list[str]:
    """The literal words of a template (its slots removed)."""
    return [word for word in template.split() if not SLOT_PATTERN.fullmatch(word)]


def template_slots(template: str) -> list[str]:
    return SLOT_PATTERN.findall(template)


@dataclass
class Grammar:
    """Templates plus the fillers each slot may take."""

    templates: tuple[str, ...] = TEMPLATES
    slots: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SLOTS))

    def __post_init__(self) -> None:
        for template in self.templates:
            for slot in template_slots(template):
                if not self.slots.get(slot):
                    raise ValueError(f"template {template!r}: slot {{{slot}}} has no fillers")

    def vocabulary(self) -> set[str]:
        words = {word for template in self.templates for word in template_words(template)}
        for slot in {slot for template in self.templates for slot in template_slots(template)}:
            words.update(self.slots[slot])
        return words

    def with_lengths(self, min_words: int, max_words: int) -> "Grammar":
        """Only the templates whose sentences have min_words..max_words words (each filler is one word)."""
        kept = tuple(t for t in self.templates if min_words <= len(t.split()) <= max_words)
        if not kept:
            lengths = sorted({len(t.split()) for t in self.templates})
            raise ValueError(f"no template makes sentences of {min_words}-{max_words} words (template lengths: {lengths})")
        return Grammar(kept, {slot: self.slots[slot] for slot in {s for t in kept for s in template_slots(t)}})

    def restricted(self, vocab_size: int, reserved: set[str] = frozenset()) -> "Grammar":
        """A sub-grammar whose vocabulary (plus the `reserved` words, e.g. greetings) has <= vocab_size words.

        Every enabled slot keeps at least one filler; templates are enabled in priority order while they fit,
        about one per eight words of vocabulary, and the rest of the budget grows the slot lists evenly.
        """
        words = set(reserved)
        templates: list[str] = []
        fillers: dict[str, list[str]] = {}

        def cost_of_template(template: str) -> set[str]:
            new = set(template_words(template))
            for slot in template_slots(template):
                if slot not in fillers:
                    new.add(self.slots[slot][0])
            return new - words

        def enable(template: str) -> None:
            templates.append(template)
            words.update(template_words(template))
            for slot in template_slots(template):
                if slot not in fillers:
                    fillers[slot] = [self.slots[slot][0]]
                    words.add(self.slots[slot][0])

        pending = list(self.templates)
        while True:
            grew = False
            # Enable the next template when few are enabled for the vocabulary so far (or none at all).
            if pending and (not templates or len(templates) < len(words) / 8):
                new = cost_of_template(pending[0])
                if len(words) + len(new) <= vocab_size:
                    enable(pending.pop(0))
                    grew = True
                elif not templates:
                    raise ValueError(
                        f"vocab_size {vocab_size} is too small: the first template {pending[0]!r} alone needs "
                        f"{len(words) + len(new)} words; use at least that many"
                    )
            if not grew:  # add a filler to the enabled slot that has the fewest
                growable = [s for s in fillers if len(fillers[s]) < len(self.slots[s])]
                growable.sort(key=lambda s: len(fillers[s]))
                for slot in growable:
                    candidate = self.slots[slot][len(fillers[slot])]
                    if candidate in words or len(words) < vocab_size:
                        fillers[slot].append(candidate)
                        words.add(candidate)
                        grew = True
                        break
            if not grew and pending:  # fillers are exhausted or full: try any later template that still fits
                for template in list(pending):
                    if len(words) + len(cost_of_template(template)) <= vocab_size:
                        pending.remove(template)
                        enable(template)
                        grew = True
                        break
            if not grew:
                break
        return Grammar(tuple(templates), {slot: tuple(values) for slot, values in fillers.items()})

    def sample(self, rng: np.random.Generator) -> str:
        template = self.templates[int(rng.integers(len(self.templates)))]
        slots = template_slots(template)
        # A slot used twice ("... {ADJ} and {ADJ}") takes different fillers when it has enough of them.
        drawn = {
            slot: list(rng.choice(self.slots[slot], slots.count(slot), replace=len(self.slots[slot]) < slots.count(slot)))
            for slot in set(slots)
        }
        return SLOT_PATTERN.sub(lambda m: str(drawn[m.group(1)].pop()), template)


def greeting_words(count: int) -> set[str]:
    return {word for sentence in GREETINGS[:count] for word in sentence.split()}
