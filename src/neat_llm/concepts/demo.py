"""The built-in demo concept: hostile insults addressed to the reader vs friendly or neutral
text of the same length and often the same topic. Written for this project (no dataset text)."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

from .conceptset import ConceptSet, ConceptSource

DEMO_CONCEPT = "insults"


def demo_concept() -> ConceptSet:
    path = resources.files("neat_llm.concepts") / "data" / "demo_insults.jsonl"
    with resources.as_file(path) as p:
        cs = ConceptSet.from_file(p, text="text", label="label", positive="insult", name=DEMO_CONCEPT)
    return replace(cs, source=ConceptSource("demo", name=DEMO_CONCEPT))
