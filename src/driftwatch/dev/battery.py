"""The large general-knowledge battery (``defaults/eval/battery-large.jsonl``): the 120 questions of the default
battery, written by hand, then questions whose answers are facts a small instruction model knows some of the time
(arithmetic, the calendar, capitals, languages, opposites, plurals, past tenses, animals, colours, chemical symbols),
each with its accepted answers, scored ``contains`` (whole words, in order).

The forgetting gates count the questions that flip between two models (docs/evaluation.md): their power grows with
the battery, and a 5-point loss is caught 4 times in 5 only with ~300 questions on the side of the split that gates
(the checkpoint review halves the battery). Every question costs each rollout's evaluation 2-3 requests, so the
default stays the 120 and the large one is opt-in (``evaluate.battery``; the efficacy study uses it). The generated
part is this module's output, fixed by its seed (``tests/unit/test_battery.py`` checks that they agree):

    python -m driftwatch.dev.battery --write   # rewrites battery-large.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys

SEED = 26

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens",
    "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest", "the Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Canada": "Ottawa", "Mexico": "Mexico City", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Chile": "Santiago", "Colombia": "Bogota", "Kenya": "Nairobi", "Thailand": "Bangkok",
    "South Korea": "Seoul", "India": "New Delhi", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Cuba": "Havana", "the Philippines": "Manila", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "Australia": "Canberra", "New Zealand": "Wellington", "Switzerland": "Bern", "the Czech Republic": "Prague",
    "Ukraine": "Kyiv", "Scotland": "Edinburgh", "England": "London", "Wales": "Cardiff", "Iceland": "Reykjavik",
    "Nigeria": "Abuja", "Ethiopia": "Addis Ababa", "Saudi Arabia": "Riyadh", "Israel": "Jerusalem",
}
CONTINENTS = {
    "Brazil": "South America", "Kenya": "Africa", "Japan": "Asia", "France": "Europe", "Canada": "North America",
    "Nigeria": "Africa", "India": "Asia", "Peru": "South America", "Germany": "Europe", "Mexico": "North America",
    "Egypt": "Africa", "China": "Asia", "Italy": "Europe", "Chile": "South America", "Morocco": "Africa",
    "Thailand": "Asia", "Norway": "Europe", "Colombia": "South America", "Ghana": "Africa", "Vietnam": "Asia",
    "Spain": "Europe", "Venezuela": "South America", "Ethiopia": "Africa", "Pakistan": "Asia", "Poland": "Europe",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark", "open": "closed",
    "early": "late", "full": "empty", "hard": "soft", "high": "low", "long": "short", "old": "young", "rich": "poor",
    "strong": "weak", "thick": "thin", "wet": "dry", "win": "lose", "push": "pull", "day": "night", "left": "right",
    "inside": "outside", "above": "below", "first": "last", "true": "false", "buy": "sell", "alive": "dead",
    "heavy": "light", "loud": "quiet", "clean": "dirty", "north": "south", "east": "west", "begin": "end",
    "friend": "enemy", "always": "never", "question": "answer", "love": "hate", "before": "after", "yes": "no",
    "entrance": "exit",
}
PLURALS = {
    "child": "children", "mouse": "mice", "man": "men", "woman": "women", "tooth": "teeth", "foot": "feet",
    "goose": "geese", "person": "people", "ox": "oxen", "cactus": "cacti", "knife": "knives", "leaf": "leaves",
    "wolf": "wolves", "box": "boxes", "city": "cities", "baby": "babies", "dog": "dogs", "book": "books",
    "bus": "buses", "potato": "potatoes", "half": "halves", "life": "lives", "wife": "wives", "shelf": "shelves",
    "church": "churches", "glass": "glasses", "story": "stories", "house": "houses", "apple": "apples",
    "car": "cars",
}
PAST = {
    "go": "went", "run": "ran", "eat": "ate", "see": "saw", "write": "wrote", "take": "took", "give": "gave",
    "drink": "drank", "swim": "swam", "sing": "sang", "come": "came", "buy": "bought", "think": "thought",
    "teach": "taught", "catch": "caught", "bring": "brought", "fly": "flew", "drive": "drove", "speak": "spoke",
    "break": "broke", "choose": "chose", "forget": "forgot", "begin": "began", "sleep": "slept", "keep": "kept",
    "leave": "left", "feel": "felt", "make": "made", "find": "found", "tell": "told", "sit": "sat",
    "stand": "stood", "walk": "walked", "play": "played", "jump": "jumped",
}
LEGS = {"dog": 4, "cat": 4, "horse": 4, "cow": 4, "chicken": 2, "duck": 2, "ant": 6, "bee": 6, "beetle": 6,
        "octopus": 8, "human": 2, "ostrich": 2, "elephant": 4, "lion": 4, "butterfly": 6, "scorpion": 8}
YOUNG = {"cat": ["kitten"], "dog": ["puppy", "pup"], "cow": ["calf"], "sheep": ["lamb"], "horse": ["foal"],
         "goat": ["kid"], "bear": ["cub"], "lion": ["cub"], "duck": ["duckling"], "frog": ["tadpole"],
         "goose": ["gosling"], "kangaroo": ["joey"], "pig": ["piglet"], "deer": ["fawn"], "swan": ["cygnet"],
         "owl": ["owlet"]}
SOUNDS = {"cow": ["moo"], "dog": ["bark", "woof"], "cat": ["meow", "miaow"], "sheep": ["baa", "bleat"],
          "duck": ["quack"], "pig": ["oink"], "lion": ["roar"], "snake": ["hiss"], "horse": ["neigh"],
          "owl": ["hoot"], "bee": ["buzz"], "donkey": ["bray"]}
COLOURS = {"a ripe banana": "yellow", "grass": "green", "snow": "white", "coal": "black", "a ripe tomato": "red",
           "the sky on a clear day": "blue", "an orange": "orange", "a lemon": "yellow", "milk": "white",
           "a polar bear's fur": "white", "a crow": "black", "a fire engine": "red", "a lime": "green",
           "chocolate": "brown", "a pumpkin": "orange", "an emerald": "green", "a ruby": "red",
           "a sapphire": "blue", "blood": "red", "a carrot": "orange"}
SHAPES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8, "decagon": 10,
          "rectangle": 4}

SYMBOLS = {"gold": "Au", "silver": "Ag", "iron": "Fe", "oxygen": "O", "hydrogen": "H", "carbon": "C",
           "nitrogen": "N", "sodium": "Na", "helium": "He", "copper": "Cu", "lead": "Pb", "calcium": "Ca",
           "chlorine": "Cl", "potassium": "K", "zinc": "Zn"}
LANGUAGES = {"France": "French", "Germany": "German", "Spain": "Spanish", "Italy": "Italian", "Brazil": "Portuguese",
             "Japan": "Japanese", "China": ["Chinese", "Mandarin"], "Russia": "Russian", "Mexico": "Spanish",
             "Greece": "Greek", "the Netherlands": "Dutch", "Sweden": "Swedish", "Poland": "Polish",
             "Portugal": "Portuguese", "Egypt": "Arabic", "Turkey": "Turkish", "South Korea": "Korean",
             "Argentina": "Spanish", "Austria": "German", "Israel": "Hebrew"}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _num(n: int) -> list[str]:
    """A number's accepted spellings."""
    return [str(n)] + ([NUMBERS[n]] if n < len(NUMBERS) else [])


def _q(prompt: str, expected) -> dict:
    return {"prompt": prompt, "expected": [expected] if isinstance(expected, str) else list(expected),
            "scoring": "contains"}


def generate(seed: int = SEED) -> list[dict]:
    """The generated questions, in a fixed order (``seed``): numbers drawn at random, every family shuffled."""
    rng = random.Random(seed)
    pairs = lambda lo, hi, k: [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(k)]  # noqa: E731
    out = [_q(f"What is {a} plus {b}?", _num(a + b)) for a, b in pairs(2, 60, 70)]
    out += [_q(f"What is {a + b} minus {b}?", _num(a)) for a, b in pairs(1, 40, 55)]
    out += [_q(f"What is {a} times {b}?", _num(a * b)) for a, b in pairs(2, 12, 50)]
    out += [_q(f"What number comes after {n}?", _num(n + 1)) for n in rng.sample(range(5, 200), 20)]
    out += [_q(f"What number comes before {n}?", _num(n - 1)) for n in rng.sample(range(5, 200), 15)]
    out += [_q(f"What is half of {2 * n}?", _num(n)) for n in rng.sample(range(3, 60), 15)]
    out += [_q(f"What day of the week comes after {d}?", DAYS[(k + 1) % 7]) for k, d in enumerate(DAYS)]
    out += [_q(f"What day of the week comes before {d}?", DAYS[k - 1]) for k, d in enumerate(DAYS)]
    out += [_q(f"Which month comes after {m}?", MONTHS[(k + 1) % 12]) for k, m in enumerate(MONTHS)]
    out += [_q(f"Which month comes before {m}?", MONTHS[k - 1]) for k, m in enumerate(MONTHS)]
    out += [_q(f"What is month number {k + 1} of the year?", m) for k, m in enumerate(MONTHS)]
    out += [_q(f"What is the capital of {c}?", city) for c, city in CAPITALS.items()]
    out += [_q(f"On which continent is {c}?", where) for c, where in CONTINENTS.items()]
    out += [_q(f"What is the opposite of {w}?", o) for w, o in OPPOSITES.items()]
    out += [_q(f"What is the plural of {w}?", p) for w, p in PLURALS.items()]
    out += [_q(f"What is the past tense of {w}?", p) for w, p in PAST.items()]
    out += [_q(f"How many legs does {'an' if a[0] in 'aeiou' else 'a'} {a} have?", _num(n)) for a, n in LEGS.items()]
    out += [_q(f"What is a baby {a} called?", y) for a, y in YOUNG.items()]
    out += [_q(f"What sound does a {a} make?", s) for a, s in SOUNDS.items()]
    out += [_q(f"What color is {t}?", c) for t, c in COLOURS.items()]
    out += [_q(f"How many sides does a {s} have?", _num(n)) for s, n in SHAPES.items()]
    out += [_q(f"What is the chemical symbol for {e}?", sym) for e, sym in SYMBOLS.items()]
    out += [_q(f"What language is mainly spoken in {c}?", lang) for c, lang in LANGUAGES.items()]
    out += [_q(f"How many minutes are in {n} hours?", _num(60 * n)) for n in range(2, 11)]
    out += [_q(f"What is {n} squared?", _num(n * n)) for n in range(2, 16)]
    out += [_q(f"Which letter of the alphabet comes after {c.upper()}?", LETTERS[k + 1].upper())
            for k, c in enumerate(LETTERS[:-1]) if k % 2 == 0]
    rng.shuffle(out)
    return out


LARGE = "battery-large.jsonl"


def questions(hand: list[dict]) -> list[dict]:
    """The generated questions the shipped battery keeps after the ``hand``-written ones: each once, none already
    written by hand, and none a near-duplicate of an anchor prompt (an anchor is trained on: its question would not
    measure forgetting)."""
    from driftwatch.retrain import anchors
    from driftwatch.retrain.dataset import jaccard, shingles

    trained = [shingles(p) for p in anchors.prompts()]
    seen, out = {q["prompt"].lower() for q in hand}, []
    for q in generate():
        if q["prompt"].lower() in seen or any(jaccard(shingles(q["prompt"]), a) >= 0.4 for a in trained):
            continue
        seen.add(q["prompt"].lower())
        out.append(q)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {LARGE}")
    args = ap.parse_args()
    from driftwatch.evaluate.evaluator import shipped

    hand = [json.loads(line) for line in shipped("battery.jsonl").read_text().splitlines()]
    lines = [json.dumps(q) for q in hand + questions(hand)]
    if args.write:
        shipped(LARGE).write_text("".join(line + "\n" for line in lines))
        print(f"{shipped(LARGE)}: {len(lines)} questions ({len(hand)} written by hand)")
    else:
        sys.stdout.write("".join(line + "\n" for line in lines[len(hand):]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
