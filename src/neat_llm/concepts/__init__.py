"""Concepts: concept sets, the demo concept, representations, concept vectors and readouts."""

from .conceptset import ConceptSet, ConceptSetError, ConceptSplit
from .demo import DEMO_CONCEPT, demo_concept
from .vectors import VECTOR_METHODS, ConceptReadout, choose_reading_layer, concept_vectors, layer_aurocs

__all__ = ["ConceptSet", "ConceptSetError", "ConceptSplit", "DEMO_CONCEPT", "demo_concept", "VECTOR_METHODS",
           "ConceptReadout", "choose_reading_layer", "concept_vectors", "layer_aurocs"]
