"""Person names, only where the text itself says a name follows (opt-in, high precision).

There is no offline NER model here, so names are found by context alone: an introduction
("my name is", "I'm", "this is"), a greeting or sign-off ("Dear", "Hi", "Regards,"), a
title ("Mr.", "Dr."), or a "Name:" field, followed by capitalised words whose first word is
in a shipped list of common given names (any capitalised word after a title). Names
anywhere else in running text are NOT detected.
"""

from __future__ import annotations

from collections.abc import Iterator

import regex

# Common given names across languages, lower-case; a name must start with one of these.
GIVEN_NAMES = frozenset(
    """
    aaron abdul adam adrian ahmed aisha alan albert alejandro alex alexander alexandra alice
    alicia ali alison amanda amelia amy ana andrea andrew andy angela anita ann anna anne
    anthony antonio arjun arthur ashley ava barbara ben benjamin beth betty bill bob brandon
    brenda brian bruce bruno carla carlos carmen carol caroline catherine charles charlie
    charlotte chen chloe chris christian christina christine christopher claire daniel
    daniela david deborah dennis diana diego dmitri donald donna dorothy edward elena
    elizabeth ella ellen emily emma eric erik eva fatima felix fernando fiona francesca
    francisco frank gabriel gary george gloria greg gregory hana hannah harry heather helen
    henry hiroshi hugo ian igor isabel isabella ivan jack jacob james jan jane janet jason
    javier jean jeff jeffrey jennifer jeremy jessica jim joan joe john jonathan jorge jose
    joseph joshua juan julia julie justin karen kate katherine kathleen kenji kevin kim
    kyle laura lauren leo liam linda lisa liu lucas lucy luis luke maria marie mark martha
    martin mary matthew megan mei melissa michael michelle miguel mohamed mohammed muhammad
    nancy natalie nathan nicholas nicole noah olga oliver olivia omar pablo patricia patrick
    paul paula pedro peter philip priya rachel rahul raj rebecca richard robert roberto ryan
    sam samantha samuel sandra sara sarah scott sean sergei sharon sofia sophia sophie
    stephanie stephen steve steven susan tanya thomas tim timothy tom tony tyler valentina
    victor victoria vincent wang wei william yuki yusuf zhang
    """.split()
)
_TRIGGERS = regex.compile(
    r"(?:(?i:my name is|my name's|name:)|I am|I'm|[Tt]his is|Dear|Hi|Hello|Hey"
    r"|(?:Regards|Thanks|Cheers|Sincerely|Best),?|Mrs?\.|Ms\.|Dr\.)[ \t]*\n?[ \t]*(?<=\s)"
)
_NAME = regex.compile(
    r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?(?:[ \t][A-Z][a-z]+(?:[-'][A-Z][a-z]+)?){0,2}"
)


def find_person_names(text: str) -> Iterator[tuple[int, int]]:
    """Spans of names that follow an introduction, greeting, sign-off, title or field."""
    for trigger in _TRIGGERS.finditer(text):
        if trigger.start() > 0 and text[trigger.start() - 1].isalpha():
            continue
        m = _NAME.match(text, trigger.end())
        if m is None:
            continue
        titled = trigger.group().rstrip()[-1] == "."
        if titled or m.group().split()[0].lower() in GIVEN_NAMES:
            yield m.span()
