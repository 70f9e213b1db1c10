"""The pre-merge contract of a MiniLM tweet tagger (WNUT-16): entity-level F1 in the seqeval
sense (exact span and type), compared base vs tuned with a seeded paired bootstrap over the
600 held-out tweets.
"""

import pytest


@pytest.mark.retains(task="wnut16", max_drop=0.03)
def test_keeps_entity_f1():
    """Micro entity F1 over all ten types within 3 points of the base."""


@pytest.mark.retains(task="wnut16", metric="recall", max_drop=0.03)
def test_keeps_entity_recall():
    """Entity recall within 3 points: the tagger must keep finding what it found."""


@pytest.mark.retains(task="wnut16", metric="f1:person", max_drop=0.05)
def test_keeps_people():
    """Persons, the most frequent type, within 5 points."""


@pytest.mark.retains(task="wnut16", metric="f1:geo-loc", max_drop=0.05)
def test_keeps_places():
    """Places within 5 points."""


@pytest.mark.retains(task="wnut16", metric="f1_macro", max_drop=0.03)
def test_keeps_every_type_on_average():
    """Macro-F1 over the entity types: every type weighs the same, rare ones included."""


@pytest.mark.retains(task="wnut16", metric="f1:other", max_drop=0.05)
def test_keeps_other_entities():
    """The catch-all 'other' type (events, titles, ...), the third most frequent, within 5 points."""
