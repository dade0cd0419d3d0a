"""What the synthetic corpus says: meanings, the signs that express them, and their free spoken translations.

The domain imitates PHOENIX-2014T (German TV weather forecasts). A sentence is made in three layers, as
in a real sign language corpus:

1. a **meaning**: a frame ("regional weather") with its slots filled by concepts (TOMORROW, NORTH, RAIN,
   HEAVY);
2. its **gloss sequence**, what the signer signs: sign order of the sign language (time, place, topic,
   comment; modifiers after the noun), one sign per concept whatever word the translation uses, no
   articles or copulas, and optional signs (`?IX`, a pointing sign; `?ALSO`) that a signer may drop;
3. its **translation**, what the spoken-language text says: the frame's usual spoken template or one of
   its paraphrases (a free translation, not a word-by-word one), each concept realised by one of its
   synonyms.

So the video (rendered from the glosses) decides the meaning, but not which template or synonyms the
translator chose: exactly the part of a real translation that a model cannot read off the signing.

`Grammar.restricted(num_signs)` gives the sub-grammar with about that many distinct signs: frames are
enabled in a fixed priority order and the slot lists grow round-robin, so a small vocabulary still has
every kind of sentence and a bigger one mostly adds fillers (more places, numbers, weather words).

Everything here is ordered (tuples, dicts, `dict.fromkeys`): nothing iterates a `set`, whose order
changes with PYTHONHASHSEED, so a seed gives the same corpus in every process.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Concept:
    """One sign (its gloss) and the words a translation may use for it, the usual one first."""

    gloss: str
    words: tuple[str, ...]


def _concepts(*entries: str) -> tuple[Concept, ...]:
    """'GLOSS=word|synonym|...' or a bare 'word' (gloss = the word upper-cased, no synonym)."""
    out = []
    for entry in entries:
        gloss, _, words = entry.partition("=")
        if not words:
            gloss, words = entry.upper(), entry
        out.append(Concept(gloss, tuple(words.split("|"))))
    return tuple(out)


# Slot types and their concepts, most common first (a restricted grammar takes the first ones).
SLOTS: dict[str, tuple[Concept, ...]] = {
    "DAY": _concepts(
        "TOMORROW=tomorrow|on the next day", "TODAY=today|during the day", "TONIGHT=tonight|this night",
        "LATER=later|afterwards|later on", "WEEKEND=at the weekend|over the weekend", "SOON=soon|shortly",
        "MEANWHILE=meanwhile|in the meantime", "OVERNIGHT=overnight|through the night",
    ),
    "REGION": _concepts(  # the article belongs to the region's words: "in the north", "in northern germany"
        "NORTH=the north|northern germany", "SOUTH=southern germany|the south", "EAST=the east|eastern regions",
        "WEST=western parts|the west", "COAST=coastal areas|the coast", "MOUNTAIN=mountains|high ground",
        "NORTHEAST=the northeast", "SOUTHWEST=the southwest|southwestern parts", "NORTHWEST=the northwest",
        "SOUTHEAST=southeastern parts|the southeast", "VALLEY=valleys|river valleys", "ISLAND=islands",
        "ALPS=alps|alpine regions", "LOWLAND=lowlands|low ground", "CENTRE=central germany|the centre",
        "HILL=hills|hill country", "LAKE=lakes|the lake district", "FOREST=forests|woodland",
        "BORDER=border regions|border areas", "PLAIN=plains", "UPLAND=uplands", "HEATH=heathland", "BAY=the bay",
        "PENINSULA=the peninsula",
    ),
    "PLACE": _concepts(
        "berlin", "hamburg", "munich", "cologne", "frankfurt", "stuttgart", "dresden", "leipzig", "hanover",
        "bremen", "nuremberg", "bavaria", "saxony", "hesse", "thuringia", "brandenburg", "austria",
        "switzerland", "denmark", "poland", "france", "holland", "belgium", "bonn", "kiel", "rostock",
        "potsdam", "mainz", "erfurt", "freiburg", "passau", "augsburg", "essen", "dortmund", "magdeburg",
        "lubeck", "aachen", "trier", "kassel", "ulm",
    ),
    "WEATHER": _concepts(
        "RAIN=rain|rainfall", "SUN=sun|sunshine", "SNOW=snow|snowfall", "FOG=fog", "CLOUD=clouds|cloud cover",
        "SHOWER=showers|rain showers", "THUNDERSTORM=thunderstorms|thundery storms", "DRIZZLE=drizzle",
        "HAIL=hail", "SLEET=sleet", "FROST=frost|ground frost", "MIST=mist", "STORM=storms|gales",
        "GUST=gusts|squalls", "ICE=black ice|icy roads", "HEAT=heat", "LIGHTNING=lightning", "HAZE=haze",
        "DOWNPOUR=downpours|cloudbursts", "FLURRY=flurries|snow flurries", "DEW=dew", "THAW=thaw",
        "BLIZZARD=blizzards", "DROUGHT=drought",
    ),
    "ADJ": _concepts(
        "SUNNY=sunny|bright", "CLOUDY=cloudy|overcast", "RAINY=rainy|wet", "WINDY=windy|breezy", "DRY=dry",
        "MILD=mild", "COLD=cold|chilly", "WARM=warm", "FOGGY=foggy|misty", "HOT=hot", "COOL=cool|fresh",
        "FRIENDLY=friendly|pleasant", "STORMY=stormy|blustery", "CHANGEABLE=changeable|unsettled",
        "CLEAR=clear", "GREY=grey|dull", "HUMID=humid|muggy", "FROSTY=frosty|icy", "CALM=calm",
        "GLOOMY=gloomy", "SULTRY=sultry", "WINTRY=wintry", "SUMMERY=summery", "DAMP=damp", "CRISP=crisp",
    ),
    "AMOUNT": _concepts(
        "HEAVY=heavy|strong|intense", "LIGHT=light|slight|weak", "SOME=some|a little", "SCATTERED=scattered|isolated",
        "FREQUENT=frequent|repeated", "BRIEF=brief|short", "PERSISTENT=persistent|lasting", "THICK=thick|dense",
        "MODERATE=moderate", "FIERCE=fierce|violent", "PATCHY=patchy", "WIDESPREAD=widespread|extensive",
    ),
    "NUMBER": _concepts(
        "five", "ten", "two", "eight", "three", "twelve", "one", "fifteen", "four", "twenty", "six", "seven",
        "nine", "eleven", "thirteen", "fourteen", "sixteen", "seventeen", "eighteen", "nineteen", "thirty",
        "zero", "twentyfive", "twentytwo",
    ),
    "DIR": _concepts("NORTH=north", "SOUTH=south", "EAST=east", "WEST=west", "NORTHWEST=northwest",
                     "SOUTHEAST=southeast", "NORTHEAST=northeast", "SOUTHWEST=southwest"),
    "PART": _concepts(
        "MORNING=morning", "EVENING=evening", "AFTERNOON=afternoon", "NIGHT=night", "NOON=noon|midday",
        "DAWN=dawn|daybreak", "DAYTIME=daytime", "MIDNIGHT=midnight",
    ),
    "WEEKDAY": _concepts("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "TREND": _concepts("RISE=rise|climb", "FALL=fall|drop", "STAY=stay|remain", "SINK=sink|go down",
                       "REACH=reach|peak at"),
}


@dataclass(frozen=True)
class Frame:
    """A kind of meaning: its slots (as `{ROLE}`), its gloss template and its spoken templates.

    A role is a slot type with an optional digit (`{REGION2}`: a second, different region). Gloss template
    tokens outside braces are fixed signs; a leading `?` marks a sign the signer may drop. Spoken templates
    are ordered from the most usual to the rarest phrasing.
    """

    name: str
    glosses: str
    texts: tuple[str, ...]


# In order of priority: a restricted grammar enables the first ones first (short, frequent forms first).
FRAMES: tuple[Frame, ...] = (
    Frame("region_quality", "{DAY} {REGION} ?IX {ADJ}", (
        "{DAY} {ADJ} in {REGION}", "{REGION} will be {ADJ} {DAY}", "{DAY} {REGION} stays {ADJ}")),
    Frame("region_weather", "{REGION} ?IX {WEATHER} {AMOUNT}", (
        "{AMOUNT} {WEATHER} over {REGION}", "in {REGION} {AMOUNT} {WEATHER}", "{REGION} can expect {AMOUNT} {WEATHER}")),
    Frame("two_weathers", "{DAY} {WEATHER} ?ALSO {WEATHER2}", (
        "{DAY} {WEATHER} and {WEATHER2}", "{DAY} a mix of {WEATHER} with {WEATHER2}",
        "{WEATHER} followed by {WEATHER2} {DAY}")),
    Frame("temperature_range", "TEMPERATURE {NUMBER} TO {NUMBER2} DEGREE", (
        "temperatures between {NUMBER} and {NUMBER2} degrees", "highs of {NUMBER} to {NUMBER2} degrees",
        "thermometers show {NUMBER} to {NUMBER2}")),
    Frame("day_region_weather", "{DAY} {REGION} ?IX {WEATHER} {AMOUNT}", (
        "{DAY} {AMOUNT} {WEATHER} across {REGION}", "{REGION} gets {AMOUNT} {WEATHER} {DAY}",
        "{DAY} there will be {AMOUNT} {WEATHER} in {REGION}")),
    Frame("place_degrees", "{PLACE} ?IX {NUMBER} DEGREE", (
        "{NUMBER} degrees in {PLACE}", "{PLACE} reaches {NUMBER} degrees", "{PLACE} expects about {NUMBER} degrees")),
    Frame("wind", "WIND {DIR} COME {AMOUNT}", (
        "a {AMOUNT} wind blows from the {DIR}", "{AMOUNT} winds out of the {DIR}", "expect {AMOUNT} {DIR} winds")),
    Frame("contrast", "{DAY} {REGION} {WEATHER} {REGION2} {WEATHER2}", (
        "{DAY} {WEATHER} in {REGION} and {WEATHER2} in {REGION2}",
        "{WEATHER} for {REGION} while {REGION2} gets {WEATHER2} {DAY}",
        "{DAY} {REGION} sees {WEATHER} but {REGION2} has {WEATHER2}")),
    Frame("part_two_qualities", "{PART} {ADJ} ?ALSO {ADJ2}", (
        "{ADJ} and {ADJ2} during the {PART}", "the {PART} will be {ADJ} and {ADJ2}", "by {PART} {ADJ} but {ADJ2}")),
    Frame("moving", "{WEATHER} MOVE {DIR}", (
        "{WEATHER} moving {DIR}", "the {WEATHER} drifts towards the {DIR}", "{WEATHER} heading off to the {DIR}")),
    Frame("trend", "TEMPERATURE {TREND} {NUMBER} DEGREE", (
        "temperatures {TREND} to {NUMBER} degrees", "values {TREND} to {NUMBER}",
        "the temperature will {TREND} to {NUMBER} degrees")),
    Frame("stays", "{DAY} STAY {ADJ}", (
        "{DAY} it stays {ADJ}", "{DAY} it remains {ADJ}", "still {ADJ} {DAY}")),
    Frame("night_minus", "NIGHT MINUS {NUMBER} {REGION} ?IX", (
        "minus {NUMBER} degrees at night in {REGION}", "overnight down to minus {NUMBER} in {REGION}",
        "nights in {REGION} bring minus {NUMBER}")),
    Frame("weekday_weather", "{WEEKDAY} {ADJ} {WEATHER} {AMOUNT}", (
        "on {WEEKDAY} {ADJ} with {AMOUNT} {WEATHER}", "{WEEKDAY} turns {ADJ} with {AMOUNT} {WEATHER}",
        "{AMOUNT} {WEATHER} on a {ADJ} {WEEKDAY}")),
    Frame("place_quality", "{DAY} {PLACE} WEATHER {ADJ}", (
        "{DAY} {ADJ} weather in {PLACE}", "{PLACE} gets {ADJ} weather {DAY}", "{DAY} weather for {PLACE} is {ADJ}")),
    Frame("air", "AIR {ADJ} {DIR} COME", (
        "{ADJ} air comes from the {DIR}", "{ADJ} air arrives out of the {DIR}", "from the {DIR} flows {ADJ} air")),
    Frame("two_places", "{PLACE} {WEATHER} {PLACE2} {WEATHER2}", (
        "{WEATHER} in {PLACE} and {WEATHER2} in {PLACE2}", "{PLACE} has {WEATHER} and {PLACE2} {WEATHER2}",
        "{WEATHER} for {PLACE} while {PLACE2} sees {WEATHER2}")),
    Frame("part_brings", "{PART} {WEATHER} {AMOUNT}", (
        "the {PART} brings {AMOUNT} {WEATHER}", "{AMOUNT} {WEATHER} by {PART}", "during the {PART} {AMOUNT} {WEATHER}")),
    Frame("becomes", "{REGION} ?IX BECOME {ADJ}", (
        "{REGION} becomes {ADJ}", "it turns {ADJ} in {REGION}", "{ADJ} conditions develop over {REGION}")),
    Frame("two_weekdays", "{WEEKDAY} {WEEKDAY2} {ADJ}", (
        "{WEEKDAY} and {WEEKDAY2} {ADJ}", "{ADJ} on {WEEKDAY} and {WEEKDAY2}", "both {WEEKDAY} and {WEEKDAY2} stay {ADJ}")),
    Frame("place_time_degrees", "{DAY} {PART} {PLACE} {NUMBER} DEGREE", (
        "{DAY} {PART} {NUMBER} degrees in {PLACE}", "{PLACE} has {NUMBER} degrees {DAY} {PART}",
        "{DAY} at {PART} {PLACE} reaches {NUMBER}")),
    Frame("weekday_region_forecast", "{WEEKDAY} {REGION} {WEATHER} {AMOUNT} TEMPERATURE {NUMBER}", (
        "on {WEEKDAY} {AMOUNT} {WEATHER} in {REGION} at {NUMBER} degrees",
        "{WEEKDAY} brings {AMOUNT} {WEATHER} to {REGION} with {NUMBER} degrees",
        "{REGION} sees {AMOUNT} {WEATHER} on {WEEKDAY} and {NUMBER} degrees")),
    Frame("two_qualities_region", "{REGION} ?IX {ADJ} {ADJ2}", (
        "{ADJ} and {ADJ2} in {REGION}", "{REGION} is {ADJ} and {ADJ2}", "over {REGION} {ADJ} but {ADJ2}")),
    Frame("place_weather_part", "{PLACE} {WEATHER} {PART}", (
        "{WEATHER} in {PLACE} at {PART}", "{WEATHER} for {PLACE} by {PART}", "{PLACE} expects {WEATHER} during the {PART}")),
)

# Fixed meanings that open and close every broadcast; the corpus repeats these many times ("k sentences
# repeated r times"), like "guten abend liebe zuschauer" (63x) and its paraphrase "liebe zuschauer guten
# abend" (44x) in PHOENIX-2014T. Each recording takes one of the spoken forms.
GREETINGS: tuple[Frame, ...] = (
    Frame("greeting_evening", "HELLO EVENING DEAR VIEWER", (
        "good evening dear viewers", "dear viewers good evening", "a good evening to all viewers")),
    Frame("greeting_weather", "NOW WEATHER", ("and now the weather", "now for the weather", "here comes the weather")),
    Frame("greeting_goodbye", "EVENING NICE WISH", (
        "have a nice evening", "i wish you a nice evening", "enjoy your evening")),
    Frame("greeting_forecast", "HERE WEATHER FORECAST", (
        "here is the weather forecast", "the forecast now", "now the forecast for you")),
    Frame("greeting_night", "NIGHT GOOD BYE", ("good night and goodbye", "goodbye and good night", "good night")),
    Frame("greeting_thanks", "THANK NIGHT GOOD", (
        "thank you and good night", "thanks and good night", "good night and thank you")),
    Frame("greeting_welcome", "WELCOME WEATHER", ("welcome to the weather", "welcome to the forecast", "hello and welcome")),
    Frame("greeting_weekend", "WEEKEND ENJOY", ("enjoy the weekend", "have a nice weekend", "a pleasant weekend to you")),
)

ROLE_PATTERN = re.compile(r"\{([A-Z]+)(\d*)\}")


def role_type(role: str) -> str:
    return role.rstrip("0123456789")


def frame_roles(frame: Frame) -> list[str]:
    """The roles of a frame in gloss order, each once (e.g. ['DAY', 'REGION', 'ADJ'])."""
    return list(dict.fromkeys(m.group(1) + m.group(2) for m in ROLE_PATTERN.finditer(frame.glosses)))


def fixed_signs(frame: Frame) -> list[str]:
    """The frame's own signs (not slots), optional ones included, without the '?' mark."""
    return [token.lstrip("?") for token in frame.glosses.split() if not ROLE_PATTERN.fullmatch(token)]


def frame_length(frame: Frame) -> int:
    """Signs in the frame's gloss sequence, optional ones included."""
    return len(frame.glosses.split())


@dataclass(frozen=True)
class Meaning:
    """A frame with its roles filled: what a sentence says, whatever the signing or the translation."""

    frame: Frame
    fillers: tuple[tuple[str, Concept], ...]  # (role, concept), in gloss order

    def key(self) -> tuple:
        return (self.frame.name, tuple((role, concept.gloss) for role, concept in self.fillers))

    def glosses(self, rng: np.random.Generator | None = None, drop_rate: float = 0.0) -> tuple[str, ...]:
        """The signs a signer makes: optional signs dropped with probability `drop_rate` each."""
        by_role = dict(self.fillers)
        out = []
        for token in self.frame.glosses.split():
            match = ROLE_PATTERN.fullmatch(token)
            if match:
                out.append(by_role[match.group(1) + match.group(2)].gloss)
            elif token.startswith("?"):
                if rng is None or drop_rate <= 0 or rng.random() >= drop_rate:
                    out.append(token[1:])
            else:
                out.append(token)
        return tuple(out)

    def translate(self, rng: np.random.Generator, paraphrases: int = 1, synonym_rate: float = 0.0,
                  paraphrase_rate: float = 0.4) -> str:
        """A spoken translation: the usual template, or with probability `paraphrase_rate` one of the next
        `paraphrases` - 1 (uniformly); each concept as its usual word, or with probability `synonym_rate` a
        synonym."""
        usable = self.frame.texts[: max(1, paraphrases)]
        template = usable[0]
        if len(usable) > 1 and rng.random() < paraphrase_rate:
            template = usable[1 + int(rng.integers(len(usable) - 1))]
        by_role = dict(self.fillers)

        def word(match: re.Match) -> str:
            words = by_role[match.group(1) + match.group(2)].words
            if len(words) > 1 and synonym_rate > 0 and rng.random() < synonym_rate:
                return words[1 + int(rng.integers(len(words) - 1))]
            return words[0]

        return ROLE_PATTERN.sub(word, template)


@dataclass
class Grammar:
    """Frames plus the concepts each slot type may take."""

    frames: tuple[Frame, ...] = FRAMES
    slots: dict[str, tuple[Concept, ...]] = field(default_factory=lambda: dict(SLOTS))

    def __post_init__(self) -> None:
        for frame in self.frames:
            roles = frame_roles(frame)
            for role in roles:
                if not self.slots.get(role_type(role)):
                    raise ValueError(f"frame {frame.name!r}: slot {{{role}}} has no fillers")
            for text in frame.texts:
                used = [m.group(1) + m.group(2) for m in ROLE_PATTERN.finditer(text)]
                if sorted(used) != sorted(roles):
                    raise ValueError(f"frame {frame.name!r}: spoken template {text!r} must use each of {roles} once")

    def signs(self) -> list[str]:
        """Every sign the grammar can use, in a fixed order."""
        signs: dict[str, None] = {}
        for frame in self.frames:
            signs.update(dict.fromkeys(fixed_signs(frame)))
            for role in frame_roles(frame):
                signs.update(dict.fromkeys(concept.gloss for concept in self.slots[role_type(role)]))
        return list(signs)

    def words(self) -> list[str]:
        """Every word a translation can contain, in a fixed order."""
        words: dict[str, None] = {}
        for frame in self.frames:
            for text in frame.texts:
                words.update(dict.fromkeys(ROLE_PATTERN.sub(" ", text).split()))
            for role in frame_roles(frame):
                for concept in self.slots[role_type(role)]:
                    words.update(dict.fromkeys(" ".join(concept.words).split()))
        return list(words)

    def with_lengths(self, min_signs: int, max_signs: int) -> "Grammar":
        """Only the frames whose gloss sequences have min_signs..max_signs signs (optional ones included)."""
        kept = tuple(frame for frame in self.frames if min_signs <= frame_length(frame) <= max_signs)
        if not kept:
            lengths = sorted(dict.fromkeys(frame_length(frame) for frame in self.frames))
            raise ValueError(f"no frame makes sentences of {min_signs}-{max_signs} signs (frame lengths: {lengths})")
        used_types = dict.fromkeys(role_type(role) for frame in kept for role in frame_roles(frame))
        return Grammar(kept, {slot: self.slots[slot] for slot in used_types})

    def restricted(self, num_signs: int, reserved: tuple[str, ...] | list[str] = ()) -> "Grammar":
        """A sub-grammar whose signs (plus the `reserved` ones, e.g. greetings') number at most num_signs.

        Every enabled slot keeps at least one filler; frames are enabled in priority order while they fit,
        about one per eight signs of vocabulary, and the rest of the budget grows the slot lists evenly.
        """
        signs = dict.fromkeys(reserved)
        frames: list[Frame] = []
        fillers: dict[str, list[Concept]] = {}

        def cost(frame: Frame) -> list[str]:
            new = list(fixed_signs(frame))
            for role in frame_roles(frame):
                if role_type(role) not in fillers:
                    new.append(self.slots[role_type(role)][0].gloss)
            return [sign for sign in dict.fromkeys(new) if sign not in signs]

        def enable(frame: Frame) -> None:
            frames.append(frame)
            signs.update(dict.fromkeys(fixed_signs(frame)))
            for role in frame_roles(frame):
                kind = role_type(role)
                if kind not in fillers:
                    fillers[kind] = [self.slots[kind][0]]
                    signs[self.slots[kind][0].gloss] = None
                # A role used twice ({REGION} ... {REGION2}) needs two different fillers.
                wanted = sum(1 for r in frame_roles(frame) if role_type(r) == kind)
                while len(fillers[kind]) < min(wanted, len(self.slots[kind])):
                    concept = self.slots[kind][len(fillers[kind])]
                    fillers[kind].append(concept)
                    signs[concept.gloss] = None

        pending = list(self.frames)
        while True:
            grew = False
            # Enable the next frame when few are enabled for the vocabulary so far (or none at all).
            if pending and (not frames or len(frames) < len(signs) / 5):
                new = cost(pending[0])
                if len(signs) + len(new) <= num_signs:
                    enable(pending.pop(0))
                    grew = True
                elif not frames:
                    raise ValueError(
                        f"vocab_size {num_signs} is too small: the first frame {pending[0].glosses!r} alone needs "
                        f"{len(signs) + len(new)} signs; use at least that many"
                    )
            if not grew:  # add a filler to the enabled slot type that has the fewest
                growable = [kind for kind in fillers if len(fillers[kind]) < len(self.slots[kind])]
                growable.sort(key=lambda kind: len(fillers[kind]))
                for kind in growable:
                    candidate = self.slots[kind][len(fillers[kind])]
                    if candidate.gloss in signs or len(signs) < num_signs:
                        fillers[kind].append(candidate)
                        signs[candidate.gloss] = None
                        grew = True
                        break
            if not grew and pending:  # fillers are exhausted or full: try any later frame that still fits
                for frame in list(pending):
                    if len(signs) + len(cost(frame)) <= num_signs:
                        pending.remove(frame)
                        enable(frame)
                        grew = True
                        break
            if not grew:
                break
        return Grammar(tuple(frames), {kind: tuple(values) for kind, values in fillers.items()})

    def sample(self, rng: np.random.Generator) -> Meaning:
        """A random meaning: a frame, each role filled; roles of one type take different concepts."""
        frame = self.frames[int(rng.integers(len(self.frames)))]
        roles = frame_roles(frame)
        drawn: dict[str, list[Concept]] = {}
        for kind in dict.fromkeys(role_type(role) for role in roles):
            count = sum(1 for role in roles if role_type(role) == kind)
            options = self.slots[kind]
            picks = rng.choice(len(options), count, replace=len(options) < count)
            drawn[kind] = [options[int(i)] for i in picks]
        return Meaning(frame, tuple((role, drawn[role_type(role)].pop(0)) for role in roles))

    def variant(self, meaning: Meaning, rng: np.random.Generator) -> Meaning | None:
        """The meaning with one role's concept replaced by another of its type: one sign apart.
        None if no role has an alternative."""
        fillers = list(meaning.fillers)
        roles = [i for i, (role, _) in enumerate(fillers) if len(self.slots[role_type(role)]) > 1]
        if not roles:
            return None
        position = roles[int(rng.integers(len(roles)))]
        role, current = fillers[position]
        taken = {concept.gloss for r, concept in fillers if role_type(r) == role_type(role)}
        options = [concept for concept in self.slots[role_type(role)] if concept.gloss not in taken]
        if not options:
            return None
        fillers[position] = (role, options[int(rng.integers(len(options)))])
        return Meaning(meaning.frame, tuple(fillers))


def greeting_meanings(count: int) -> list[Meaning]:
    return [Meaning(frame, ()) for frame in GREETINGS[:count]]


def greeting_signs(count: int) -> list[str]:
    return list(dict.fromkeys(sign for frame in GREETINGS[:count] for sign in fixed_signs(frame)))
