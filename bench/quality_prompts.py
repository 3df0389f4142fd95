"""The fixed prompt set of `disagg bench quality`: 60 English prompts at five lengths, built deterministically
from text bundled here (no download, no tokenizer: lengths are in words; the bench reports the tokens).

Prompt i has length bucket `i % 5` and topic `i // 5` (12 topics), so any prefix of the set covers every
length; `SMOKE_SET_SIZE` (10) prompts, two per length, are the integration tests' smoke set. A prompt is an
instruction about its topic, preceded (except in the shortest bucket) by background sentences drawn from a
bundled pool with `random.Random(seed)`, so the same seed always gives the same texts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SEED = 17
SMOKE_SET_SIZE = 10
# (name, approximate words of background): about 0, 70, 280, 650 and 1200 tokens with SmolLM2's tokenizer
LENGTHS: tuple[tuple[str, int], ...] = (("instruction", 0), ("short", 50), ("medium", 220), ("long", 520),
                                        ("longer", 950))
TOPICS = (
    "how a lighthouse keeper spent a stormy night", "why bread dough rises", "how a bicycle stays upright",
    "the life cycle of a monarch butterfly", "how tides are caused by the moon", "how to plant a vegetable garden",
    "what makes a good cup of tea", "how bees make honey", "why the sky is blue",
    "how a steam engine works", "the history of the printing press", "how rivers shape valleys",
)
POOL = (
    "The keeper climbed the spiral stairs each evening and trimmed the wicks before the light was lit.",
    "Ships passing in the night watched for the flash that told them where the rocks began.",
    "Flour, water, salt and yeast become a loaf after hours of patience and a hot oven.",
    "Yeast feeds on sugars and releases carbon dioxide, which the gluten traps in small bubbles.",
    "A rider steers into a fall without thinking, and the wheels come back under the frame.",
    "The caterpillar eats milkweed for two weeks, then hangs upside down and forms a green chrysalis.",
    "Twice a day the sea climbs the beach and twice a day it slips away again.",
    "The moon pulls on the oceans, and the Earth turns beneath the bulge of water it raises.",
    "Tomatoes want sun, beans want something to climb, and lettuce is happy in the shade.",
    "Water that is too hot scorches green tea, while black tea needs a rolling boil.",
    "A forager bee visits hundreds of flowers on one trip and returns heavy with nectar.",
    "Sunlight is scattered by the air, and the short blue waves are scattered the most.",
    "Steam pushes a piston, the piston turns a crank, and the crank turns the wheels.",
    "Movable type let a printer set a page in hours that a scribe would copy in weeks.",
    "A river cuts down into soft rock and carries the sand and gravel toward the sea.",
    "The old logbook recorded the direction of the wind, the state of the sea and every ship seen.",
    "Farmers watched the sky for signs of rain, and sailors read the clouds before leaving harbour.",
    "The workshop smelled of oil and sawdust, and the tools hung in rows along the wall.",
    "Children collected shells along the shore and sorted them by colour and by size.",
    "In winter the village gathered in the hall to hear stories told by the oldest fisherman.",
)
INSTRUCTIONS = ("Explain {topic} in a few sentences.", "Write a short paragraph about {topic}.",
                "Describe {topic} for a curious child.", "Tell me {topic}, step by step.")


@dataclass(frozen=True)
class Prompt:
    index: int
    length: str  # the bucket's name
    topic: str
    text: str


def background(words: int, rng: random.Random) -> str:
    """Sentences from the pool, drawn with `rng`, until at least `words` words."""
    sentences: list[str] = []
    count = 0
    while count < words:
        sentence = rng.choice(POOL)
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


def prompt_set(size: int = len(TOPICS) * len(LENGTHS), seed: int = SEED) -> list[Prompt]:
    """The first `size` prompts (at most 60) of the set built from `seed`."""
    total = len(TOPICS) * len(LENGTHS)
    if not 1 <= size <= total:
        raise ValueError(f"the prompt set has 1 to {total} prompts, not {size}")
    rng = random.Random(seed)
    prompts = []
    for index in range(total):
        (length, words), topic = LENGTHS[index % len(LENGTHS)], TOPICS[index // len(LENGTHS)]
        instruction = INSTRUCTIONS[index % len(INSTRUCTIONS)].format(topic=topic)
        context = background(words, rng)
        text = f"{context}\n\n{instruction}" if context else instruction
        prompts.append(Prompt(index, length, topic, text))
    return prompts[:size]
