"""From a reference_styling prompt to a search query: the person and event named, plus the look.

"make me look like Taylor Swift at the Grammys" -> "Taylor Swift Grammys look";
"Zendaya's 2019 Met Gala gown" -> "Zendaya Met Gala 2019 gown". The query is never the whole
prompt: a prompt that names no person and no event gets no search.
"""

from __future__ import annotations

import re

from pipeline.types import IntentClassification, IntentSource

MAX_QUERY_WORDS = 12
MAX_QUERY_CHARS = 120

# Canonical name -> how prompts say it (lower-case regex, matched on word boundaries).
EVENTS: dict[str, str] = {
    "Met Gala": r"met gala|met ball",
    "Grammys": r"grammys?|grammy awards",
    "Oscars": r"oscars?|academy awards",
    "Golden Globes": r"golden globes?",
    "Emmys": r"emmys?|emmy awards",
    "BAFTAs": r"baftas?",
    "VMAs": r"vmas?|video music awards",
    "American Music Awards": r"american music awards|amas",
    "BET Awards": r"bet awards",
    "Brit Awards": r"brit awards|brits",
    "Billboard Music Awards": r"billboard music awards",
    "Coachella": r"coachella",
    "Cannes Film Festival": r"cannes(?: film festival)?",
    "Venice Film Festival": r"venice film festival",
    "Super Bowl halftime show": r"super bowl(?: halftime(?: show)?)?",
    "Eurovision": r"eurovision",
    "Paris Fashion Week": r"paris fashion week",
    "Milan Fashion Week": r"milan fashion week",
    "New York Fashion Week": r"new york fashion week|nyfw",
    "London Fashion Week": r"london fashion week",
    "Victoria's Secret Fashion Show": r"victoria'?s secret (?:fashion )?show",
    "royal wedding": r"royal wedding",
}

# People whose looks are searched for often, recognised even in lower case.
KNOWN_PEOPLE: tuple[str, ...] = (
    "Taylor Swift", "Zendaya", "Beyonce", "Beyoncé", "Rihanna", "Kim Kardashian", "Lady Gaga",
    "Harry Styles", "Billie Eilish", "Ariana Grande", "Dua Lipa", "Timothée Chalamet",
    "Timothee Chalamet", "Blake Lively", "Cardi B", "Doja Cat", "Jennifer Lopez", "Selena Gomez",
    "Sabrina Carpenter", "Kendall Jenner", "Kylie Jenner", "Gigi Hadid", "Bella Hadid",
    "Margot Robbie", "Emma Stone", "Anne Hathaway", "Audrey Hepburn", "Marilyn Monroe",
    "Princess Diana", "Madonna", "Cher", "Bad Bunny", "Chappell Roan", "Olivia Rodrigo",
)

# What the user wants from the look, most specific first; "look" when nothing narrower is said.
LOOK_TERMS = ("gown", "dress", "outfit", "suit", "tuxedo", "hairstyle", "makeup", "hair", "style")

# Capitalised words that start sentences or name garments, not people.
_NOT_NAMES = frozenset(
    """a an the i me my we us you your this that these those make put give dress dressed style
    look looks like as in at on for with and or of to from show turn change wear try
    red blue green black white gold silver pink purple yellow orange navy
    gown outfit suit jacket hat shoes hair makeup photo picture image selfie""".split()
)

# One pattern per list, a group per name, over the lower-cased prompt: the leftmost mention in one
# scan (a case-blind search per name, 57 of them, cost ~90 us a prompt, and the classifiers ask
# for every named look; one alternation is ~6 us with the word boundary tried once, first).
_EVENT_NAMES = tuple(EVENTS)
_EVENTS = re.compile(r"\b(?:" + "|".join(rf"(?P<e{i}>(?:{EVENTS[name]})\b)"
                                         for i, name in enumerate(_EVENT_NAMES)) + ")")
_PEOPLE = re.compile(r"\b(?:" + "|".join(rf"(?P<p{i}>{re.escape(name.lower())}\b)"
                                         for i, name in enumerate(KNOWN_PEOPLE)) + ")")
# Linear on any input: a name starts only where no name character precedes it and its words are
# bounded, so a long capitalised run ("AAAA...", "A-A-A-...") is not rescanned from every position.
# Not `\b`: there is none between CJK text and a Latin name ("\u7ed9\u6211Rihanna's look").
_WORD = r"[A-Z][\w\u2019'.-]{0,40}"
_NAME = rf"(?<![A-Za-z0-9_\u2019'.-]){_WORD}(?: {_WORD}){{0,3}}"
# A capitalised name with a cue that it is someone's look: "like X", "as X", "X's", "X at the".
_CUED_NAME = re.compile(
    rf"\b(?:like|as|channel(?:ing)?|copy(?:ing)?|inspired by)\s+(?P<a>{_NAME})"
    rf"|(?P<b>{_NAME})(?:'s|\u2019s)\b"
    rf"|(?P<c>{_NAME})\s+(?:at|from|during)\s+the\b"
    rf"|(?P<d>{_NAME})-inspired\b"
)
# "dress me like", "style me as": verbs, not the look wanted.
_LOOK_PATTERNS = tuple(
    (term, re.compile(rf"\b{term}\b(?!\s+(?:me|myself|up|like|as|her|him|them|us)\b)")) for term in LOOK_TERMS
)
_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")


def search_query(prompt: str, intent: IntentClassification) -> str | None:
    """The query for this prompt's look, or None when it names no person or event.

    An LLM read the whole prompt: its verdict stands, a query or no search at all ("my friend
    Anna's look" names nobody to search for). Otherwise the local detection below, and the
    classifier's query only when the local detection finds nothing.
    """
    classifier_query = _tidy(intent.web_search_query) if intent.web_search_query else None
    if intent.source is IntentSource.LLM:
        return classifier_query if intent.requires_web_search else None
    local = local_query(prompt)
    if local:
        return local
    return classifier_query if intent.requires_web_search else None


def local_query(prompt: str) -> str | None:
    event = find_event(prompt)
    person = find_person(prompt)
    if event is None and person is None:
        return None
    year = _YEAR.search(prompt)
    parts = [person, event, year.group(1) if year else None, look_term(prompt)]
    return _tidy(" ".join(part for part in parts if part))


def find_event(prompt: str) -> str | None:
    match = _EVENTS.search(prompt.lower())
    return _EVENT_NAMES[int(match.lastgroup[1:])] if match is not None and match.lastgroup else None


def find_person(prompt: str) -> str | None:
    if (known := _PEOPLE.search(prompt.lower())) is not None and known.lastgroup:
        return KNOWN_PEOPLE[int(known.lastgroup[1:])]
    for match in _CUED_NAME.finditer(prompt):
        name = _clean_name(next(group for group in match.groups() if group))
        if name and find_event(name) is None:
            return name
    return None


def look_term(prompt: str) -> str:
    lower = prompt.lower()
    for term, pattern in _LOOK_PATTERNS:
        if term in lower and pattern.search(lower):  # the substring test first: most are absent
            return term
    return "look"


def _clean_name(candidate: str) -> str | None:
    words = candidate.split()
    # "Put Zendaya" -> "Zendaya"; "Red Dress" -> nothing.
    while words and words[0].lower().strip("\u2019'.") in _NOT_NAMES:
        words.pop(0)
    while words and words[-1].lower().strip("\u2019'.") in _NOT_NAMES:
        words.pop()
    name = " ".join(words).strip(".-\u2019'")
    return name or None


def _tidy(query: str) -> str | None:
    words = query.split()[:MAX_QUERY_WORDS]
    tidy = " ".join(words)[:MAX_QUERY_CHARS].strip()
    return tidy or None
