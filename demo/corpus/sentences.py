"""Random English sentences from a small hand-written grammar, as text for synthetic speakers.

Varied wording and sentence shapes (statements, questions, exclamations, lists, numbers) give
the synthetic corpus a varied phonetic content and intonation without copying any text corpus.

Example
-------
>>> import numpy as np
>>> text = make_sentence(np.random.default_rng(0), num_words=9)
>>> len(text.split())
9
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["make_sentence"]

NAMES = (
    "Anna Ben Clara David Elena Frank Grace Henry Irene Jack Karen Leo Maria Nina Oscar Paula "
    "Quentin Rosa Samuel Tina Victor Wendy Xavier Yvonne Zoe Arthur Beatrice Carlos Diana "
    "Edgar Fiona George Hannah Igor Julia Kevin Laura Martin Olivia Peter Ruth Simon Ursula"
).split()

# (singular, plural)
NOUNS = [
    (word, word + "s")
    for word in (
        "apple basket bottle bridge button candle car castle chair cloud coat computer cookie "
        "desk door dragon drum engine farmer feather flower garden guitar hammer helmet hill "
        "house island jacket kettle key ladder lamp letter lion market mirror monkey motor "
        "mountain needle orange painter pencil piano picture pillow planet pocket rabbit "
        "river robot rocket sailor signal singer spoon stone student table teacher "
        "ticket tiger tower train tunnel turtle umbrella valley village violin wagon window "
        "wizard yard blanket bucket camel doctor elephant garage lemon magnet parrot puzzle "
        "ribbon saddle tractor wallet whistle"
    ).split()
] + [
    ("box", "boxes"),
    ("bus", "buses"),
    ("church", "churches"),
    ("dish", "dishes"),
    ("fox", "foxes"),
    ("sandwich", "sandwiches"),
    ("glass", "glasses"),
    ("watch", "watches"),
    ("brush", "brushes"),
    ("city", "cities"),
    ("story", "stories"),
    ("library", "libraries"),
    ("cherry", "cherries"),
    ("child", "children"),
    ("mouse", "mice"),
    ("knife", "knives"),
    ("leaf", "leaves"),
    ("wolf", "wolves"),
    ("woman", "women"),
    ("man", "men"),
    ("goose", "geese"),
    ("sheep", "sheep"),
    ("fish", "fish"),
    ("potato", "potatoes"),
    ("tomato", "tomatoes"),
]

PLACES = (
    "kitchen station harbour forest desert museum hospital airport bakery cellar attic "
    "playground theatre stadium orchard meadow factory lighthouse beach canyon square"
).split()

ADJECTIVES = (
    "old young quiet noisy bright dark heavy light tiny huge red blue green yellow purple "
    "golden silver wooden broken shiny dusty famous strange lucky clever lazy brave gentle "
    "angry happy sleepy hungry thirsty careful curious friendly gloomy proud rusty soft "
    "sharp smooth warm cold frozen wet dry fresh ancient modern empty crowded narrow wide "
    "little enormous simple"
).split()

ADVERBS = (
    "quickly slowly quietly loudly carefully happily suddenly gently calmly eagerly "
    "nervously proudly rarely often always never barely nearly early late"
).split()

# (base, past, present participle) of irregular verbs that take an object.
IRREGULAR_VERBS = [
    ("bring", "brought", "bringing"),
    ("buy", "bought", "buying"),
    ("build", "built", "building"),
    ("catch", "caught", "catching"),
    ("choose", "chose", "choosing"),
    ("draw", "drew", "drawing"),
    ("drive", "drove", "driving"),
    ("find", "found", "finding"),
    ("forget", "forgot", "forgetting"),
    ("hide", "hid", "hiding"),
    ("hold", "held", "holding"),
    ("keep", "kept", "keeping"),
    ("leave", "left", "leaving"),
    ("lend", "lent", "lending"),
    ("lose", "lost", "losing"),
    ("make", "made", "making"),
    ("meet", "met", "meeting"),
    ("sell", "sold", "selling"),
    ("send", "sent", "sending"),
    ("shake", "shook", "shaking"),
    ("sing", "sang", "singing"),
    ("steal", "stole", "stealing"),
    ("sweep", "swept", "sweeping"),
    ("take", "took", "taking"),
    ("teach", "taught", "teaching"),
    ("throw", "threw", "throwing"),
    ("wear", "wore", "wearing"),
    ("write", "wrote", "writing"),
    ("break", "broke", "breaking"),
    ("feed", "fed", "feeding"),
]
REGULAR_VERBS = (
    "paint wash open clean fix carry push pull follow watch visit count borrow repair "
    "collect deliver measure polish check fill lift guard answer remember discover order "
    "mark protect return weigh greet"
).split()

TIMES = (
    "yesterday|today|last night|this morning|on Monday|on Friday evening|after lunch|"
    "before sunrise|every winter|at midnight|in the spring|twice a week|an hour ago|"
    "at ten o'clock|during the storm|once again"
).split("|")

PREPOSITIONS = "to from into behind beside under near across through over past toward".split()
INTERJECTIONS = "Oh|Well|Look|Wow|Hey|Listen|Honestly|Of course|Oh no|Alright".split("|")
CONNECTIVES = "and|but|so|because|while|although|then|until".split("|")
QUESTION_WORDS = "why|where|when|how".split("|")


def _regular_forms(base: str) -> tuple[str, str, str]:
    """(base, past, participle) of a regular verb, with the common spelling rules."""
    if base.endswith("e"):
        return base, base + "d", base[:-1] + "ing"
    if base.endswith("y") and base[-2] not in "aeiou":
        return base, base[:-1] + "ied", base + "ing"
    return base, base + "ed", base + "ing"


VERBS = IRREGULAR_VERBS + [_regular_forms(base) for base in REGULAR_VERBS]


def _number(rng: np.random.Generator) -> str:
    """A number in words, 2 to 99, so that every voice reads it out."""
    units = "two three four five six seven eight nine".split()
    teens = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
    tens = "twenty thirty forty fifty sixty seventy eighty ninety".split()
    kind = rng.integers(3)
    if kind == 0:
        return str(rng.choice(units))
    if kind == 1:
        return str(rng.choice(teens.split()))
    return f"{rng.choice(tens)} {rng.choice(units)}" if rng.random() < 0.6 else str(rng.choice(tens))


class _Words:
    """Draws words of each category from one random generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, words) -> str:
        return words[self.rng.integers(len(words))]

    def noun_phrase(self, plural: bool | None = None) -> str:
        if plural is None:
            plural = self.rng.random() < 0.3
        noun = self.pick(NOUNS)[1 if plural else 0]
        adjective = f"{self.pick(ADJECTIVES)} " if self.rng.random() < 0.6 else ""
        if plural:
            determiner = self.pick(("the", "some", "many", "those", "these", _number(self.rng)))
        else:
            determiner = self.pick(("the", "a", "my", "your", "our", "this", "that", "every"))
            if determiner == "a" and (adjective or noun)[0] in "aeiou":
                determiner = "an"
        return f"{determiner} {adjective}{noun}"

    def subject(self) -> str:
        return self.pick(NAMES) if self.rng.random() < 0.4 else self.noun_phrase()

    def place(self) -> str:
        return f"{self.pick(PREPOSITIONS)} the {self.pick(PLACES)}"

    def verb(self) -> tuple[str, str, str]:
        return self.pick(VERBS)


def _statement(w: _Words) -> tuple[str, str]:
    _, past, _ = w.verb()
    parts = [w.subject(), past, w.noun_phrase()]
    if w.rng.random() < 0.5:
        parts.append(w.place())
    if w.rng.random() < 0.4:
        parts.append(w.pick(TIMES))
    return " ".join(parts), "."


def _progressive(w: _Words) -> tuple[str, str]:
    _, _, participle = w.verb()
    auxiliary = w.pick(("is", "was", "will be", "might be"))
    return f"{w.pick(NAMES)} {auxiliary} {participle} {w.noun_phrase()} {w.pick(ADVERBS)}", "."


def _yes_no_question(w: _Words) -> tuple[str, str]:
    base, _, _ = w.verb()
    auxiliary = w.pick(("did", "will", "can", "should", "would"))
    return f"{auxiliary} {w.subject()} {base} {w.noun_phrase()} {w.place()}", "?"


def _wh_question(w: _Words) -> tuple[str, str]:
    return f"{w.pick(QUESTION_WORDS)} is {w.noun_phrase(plural=False)} so {w.pick(ADJECTIVES)}", "?"


def _existential(w: _Words) -> tuple[str, str]:
    noun = w.pick(NOUNS)[1]
    return f"there are {_number(w.rng)} {w.pick(ADJECTIVES)} {noun} {w.place()}", "."


def _exclamation(w: _Words) -> tuple[str, str]:
    _, past, _ = w.verb()
    return f"{w.pick(INTERJECTIONS)}, {w.subject()} {past} {w.noun_phrase()} again", "!"


def _imperative(w: _Words) -> tuple[str, str]:
    base, _, _ = w.verb()
    return f"please {base} {w.noun_phrase()} {w.pick(ADVERBS)} {w.place()}", "."


def _compound(w: _Words) -> tuple[str, str]:
    first, _ = _statement(w)
    second, _ = _statement(w)
    return f"{first}, {w.pick(CONNECTIVES)} {second}", "."


def _listing(w: _Words) -> tuple[str, str]:
    items = [w.noun_phrase() for _ in range(int(w.rng.integers(3, 5)))]
    _, past, _ = w.verb()
    return f"{w.pick(NAMES)} {past} {', '.join(items[:-1])} and {items[-1]}", "."


def _short_phrase(w: _Words, num_words: int) -> tuple[str, str]:
    """A complete phrase of exactly 1 to 4 words, to fill the end of a text."""
    name = w.pick(NAMES)
    noun = w.pick(NOUNS)[0]
    phrases = {
        1: ("yes|.", "no|.", "thanks|.", "really|?", "okay|.", "hello|!", f"{name}|!", "sorry|."),
        2: (
            "thank you|.",
            "oh no|!",
            "good morning|.",
            f"hello, {name}|!",
            f"{name} agreed|.",
            "not again|!",
            "why not|?",
            f"{name} laughed|.",
        ),
        3: (
            "I see it|.",
            f"{name} was right|.",
            "not this time|.",
            f"come here, {name}|!",
            "is it ready|?",
            f"ask {name} first|.",
            f"where is {name}|?",
            "that was close|!",
        ),
        4: (
            f"{name} found the {noun}|.",
            "is it ready now|?",
            f"give it to {name}|!",
            f"I like this {noun}|.",
            f"where is the {noun}|?",
            f"{name} never said that|.",
        ),
    }[num_words]
    return tuple(w.pick(phrases).split("|"))


_SENTENCE_SHAPES: tuple[Callable[[_Words], tuple[str, str]], ...] = (
    _statement,
    _statement,
    _progressive,
    _yes_no_question,
    _wh_question,
    _existential,
    _exclamation,
    _imperative,
    _compound,
    _listing,
)


_MAX_DRAWS = 12


def make_sentence(rng: np.random.Generator, num_words: int) -> str:
    """A text of exactly ``num_words`` words, made of whole random sentences.

    Arguments
    ---------
    rng : the random generator that picks every word (same state -> same text).
    num_words : how many words to return (at least 1).
    """
    if num_words < 1:
        raise ValueError(f"num_words must be at least 1, got {num_words}")
    words = _Words(rng)
    sentences: list[str] = []
    count = 0
    while count < num_words:
        remaining = num_words - count
        # Draw sentence shapes until one fits; short phrases fill what is left.
        for _ in range(_MAX_DRAWS if remaining > 4 else 0):
            body, end = _SENTENCE_SHAPES[rng.integers(len(_SENTENCE_SHAPES))](words)
            if len(body.split()) <= remaining:
                break
        else:
            body, end = _short_phrase(words, min(remaining, 4))
        tokens = body.split()
        text = " ".join(tokens)
        sentences.append(text[0].upper() + text[1:] + end)
        count += len(tokens)
    return " ".join(sentences)
