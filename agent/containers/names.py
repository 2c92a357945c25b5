"""Docker-style generated container names (`adjective_surname`)."""

from __future__ import annotations

import secrets
from collections.abc import Container

from dockyard.common.validation import CONTAINER_NAME_PATTERN

__all__ = ["NAME_RE", "generate_name"]

NAME_RE = CONTAINER_NAME_PATTERN
"""Docker's rule for container names (`dockyard.common.validation`, shared with the CLI)."""

_LEFT = (
    "admiring", "adoring", "agitated", "amazing", "angry", "awesome", "blissful", "bold",
    "boring", "brave", "busy", "charming", "clever", "compassionate", "competent",
    "confident", "cranky", "dazzling", "determined", "distracted", "dreamy", "eager",
    "ecstatic", "elastic", "elated", "elegant", "epic", "exciting", "fervent", "festive",
    "flamboyant", "focused", "friendly", "frosty", "funny", "gallant", "gifted", "goofy",
    "gracious", "happy", "hardcore", "heuristic", "hopeful", "hungry", "infallible",
    "inspiring", "jolly", "jovial", "keen", "kind", "laughing", "loving", "lucid", "magical",
    "modest", "musing", "mystifying", "naughty", "nervous", "nice", "nifty", "nostalgic",
    "objective", "optimistic", "peaceful", "pedantic", "pensive", "practical", "priceless",
    "quirky", "quizzical", "relaxed", "reverent", "romantic", "sad", "serene", "sharp",
    "silly", "sleepy", "stoic", "strange", "stupefied", "suspicious", "sweet", "tender",
    "thirsty", "trusting", "upbeat", "vibrant", "vigilant", "vigorous", "wizardly",
    "wonderful", "xenodochial", "youthful", "zealous", "zen",
)
_RIGHT = (
    "agnesi", "albattani", "allen", "archimedes", "babbage", "banach", "bardeen", "bartik",
    "bell", "bhabha", "blackwell", "bohr", "booth", "borg", "bose", "brahmagupta", "brown",
    "cannon", "carson", "cerf", "chandrasekhar", "clarke", "cohen", "curie", "darwin",
    "davinci", "dijkstra", "einstein", "elion", "engelbart", "euclid", "euler", "fermat",
    "fermi", "feynman", "franklin", "galileo", "gauss", "goldberg", "goodall", "hamilton",
    "hawking", "heisenberg", "hertz", "hopper", "hypatia", "jackson", "jennings", "kalam",
    "kepler", "knuth", "lamport", "leakey", "lovelace", "lumiere", "mahavira", "mayer",
    "mccarthy", "mclean", "meitner", "mendel", "merkle", "morse", "napier", "newton",
    "nobel", "noether", "pare", "pascal", "pasteur", "perlman", "pike", "poincare", "ptolemy",
    "raman", "ritchie", "rosalind", "sammet", "shannon", "shockley", "sinoussi", "stallman",
    "swartz", "tesla", "thompson", "torvalds", "turing", "varahamihira", "volhard", "wiles",
    "williams", "wilson", "wozniak", "wright", "yalow", "yonath",
)


def generate_name(taken: Container[str]) -> str:
    """A random `adjective_surname` not in `taken` (a digit is appended on collisions)."""
    for attempt in range(100):
        name = f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
        if attempt >= 10:
            name += str(secrets.randbelow(10 * attempt))
        if name != "boring_wozniak" and name not in taken:  # docker's one exception
            return name
    return f"container_{secrets.token_hex(6)}"
