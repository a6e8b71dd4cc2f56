"""The synthetic corpus's speakers: eSpeak NG voice variants, accents and prosody, as distinct as they allow."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from demo.corpus.options import SPLITS, STREAM_SPEAKERS, CorpusOptions
from demo.corpus.voice_variation import BREATH_DB_RANGE, FORMANT_SCALE_RANGE, WOBBLE_RANGE

logger = logging.getLogger(__name__)


# eSpeak NG accents of English, and Latin-script languages that read English words with
# their own letter-to-sound rules (a strong foreign accent, still speech-like).
ENGLISH_ACCENTS = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-029",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
OTHER_LANGUAGES = (
    "de",
    "nl",
    "af",
    "sv",
    "da",
    "nb",
    "fr",
    "es",
    "es-419",
    "it",
    "pt",
    "pt-br",
    "ro",
    "ca",
    "pl",
    "cs",
    "sk",
    "hr",
    "fi",
    "et",
    "hu",
    "id",
    "ms",
    "sw",
    "tr",
    "eo",
    "cy",
    "ga",
    "lb",
    "is",
    "sq",
    "lv",
    "lt",
    "sl",
    "mt",
    "ht",
)
# Voice variants of espeak-ng-data/voices/!v, split by the pitch of the voice. Whispered,
# unvoiced and robotic variants (long metallic echoes) are left out.
FEMALE_VARIANTS = (
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "Alicia",
    "Andrea",
    "Annie",
    "anika",
    "aunty",
    "belinda",
    "grandma",
    "linda",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "zac",
)
MALE_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "Alex",
    "Andy",
    "AnxiousAndy",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Nguyen",
    "Reed",
    "Storm",
    "Tweaky",
    "adam",
    "announcer",
    "antonio",
    "benjamin",
    "boris",
    "croak",
    "david",
    "ed",
    "edward",
    "edward2",
    "fast",
    "grandpa",
    "gustave",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "john",
    "kaukovalta",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "mike2",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "sandro",
    "travis",
    "victor",
)
PITCH_BOUNDS = (10, 90)  # eSpeak pitch 0..100: about 0.75x .. 1.5x the variant's own pitch
INTONATION_BOUNDS = (15, 95)  # intonation range, 0 = monotone
RATE_BOUNDS = (125, 215)  # words per minute


@dataclasses.dataclass(frozen=True)
class SyntheticSpeaker:
    """One synthetic speaker: an eSpeak NG voice with fixed prosody settings."""

    speaker_id: str
    split: str
    language: str
    variant: str
    gender: str  # of the voice variant: "female" or "male"
    pitch: int
    pitch_range: int
    rate: int
    # what eSpeak NG cannot vary (demo.corpus.voice_variation)
    formant_scale: float = 1.0
    wobble: float = 0.0
    breath_db: float | None = None  # None: no aspiration noise

    @property
    def voice(self) -> str:
        return f"{self.language}+{self.variant}"


def _stratified(rng: np.random.Generator, count: int, low: float, high: float) -> np.ndarray:
    """``count`` values covering [low, high] evenly (one per stratum), in random order."""
    return low + (high - low) * (rng.permutation(count) + rng.random(count)) / count


def _cycled(rng: np.random.Generator, choices: Sequence[str], count: int) -> list[str]:
    """``count`` picks that use every choice before repeating one (reshuffled each round)."""
    picks: list[str] = []
    while len(picks) < count:
        picks.extend(choices[index] for index in rng.permutation(len(choices)))
    return picks[:count]


def design_speakers(options: CorpusOptions) -> list[SyntheticSpeaker]:
    """Speaker identities for all splits, as distinct from one another as the voices allow.

    Half the speakers use female voice variants; variants, accents and languages are used
    round-robin, and pitch, intonation range, rate, formant scale, wobble and breath level are
    stratified over their ranges. The
    speakers are then dealt to train/dev/test at random, so that every split spans the space.
    Ids ``spk000``, ``spk001``... are numbered train first, then dev, then test.
    """
    rng = np.random.default_rng([options.seed, STREAM_SPEAKERS])
    total = sum(options.num_speakers(split) for split in SPLITS)
    is_female = rng.permutation(total) % 2 == 0
    female_variants = iter(_cycled(rng, FEMALE_VARIANTS, int(is_female.sum())))
    male_variants = iter(_cycled(rng, MALE_VARIANTS, int((~is_female).sum())))
    is_english = rng.permutation(total) % 2 == 0
    english = iter(_cycled(rng, ENGLISH_ACCENTS, int(is_english.sum())))
    other = iter(_cycled(rng, OTHER_LANGUAGES, int((~is_english).sum())))
    pitches = _stratified(rng, total, *PITCH_BOUNDS)
    pitch_ranges = _stratified(rng, total, *INTONATION_BOUNDS)
    rates = _stratified(rng, total, *RATE_BOUNDS)
    voices = [
        dict(
            language=next(english) if is_english[index] else next(other),
            variant=next(female_variants) if is_female[index] else next(male_variants),
            gender="female" if is_female[index] else "male",
            pitch=int(round(pitches[index])),
            pitch_range=int(round(pitch_ranges[index])),
            rate=int(round(rates[index])),
        )
        for index in range(total)
    ]
    order = rng.permutation(total)
    # Drawn last, so that the eSpeak settings above stay those of corpora made before these traits.
    formant_scales = _stratified(rng, total, *FORMANT_SCALE_RANGE)
    wobbles = _stratified(rng, total, *WOBBLE_RANGE)
    breath_levels = _stratified(rng, total, *BREATH_DB_RANGE)
    for index, voice in enumerate(voices):
        voice.update(
            formant_scale=round(float(formant_scales[index]), 4),
            wobble=round(float(wobbles[index]), 4),
            breath_db=round(float(breath_levels[index]), 2),
        )
    splits = [split for split in SPLITS for _ in range(options.num_speakers(split))]
    width = max(3, len(str(total - 1)))
    return [
        SyntheticSpeaker(speaker_id=f"spk{index:0{width}d}", split=split, **voices[voice_index])
        for index, (split, voice_index) in enumerate(zip(splits, order))
    ]
