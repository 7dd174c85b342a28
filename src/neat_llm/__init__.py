"""neat-llm: find the concept neurons of a language model, turn them off, measure what changes.

    model = neat_llm.load_model()                       # embedded SmolLM2-135M-Instruct
    model = neat_llm.wrap(hf_model, tokenizer)          # or a Hugging Face model you already loaded
    concept = neat_llm.ConceptSet.from_file("data.jsonl", text="text", label="label", positive="hate")
    run = neat_llm.find_concept_neurons(model, concept, method="neat")
    with neat_llm.turn_off(model, run.top(50)):
        print(model.generate("You are"))
"""

from .concepts import ConceptSet, ConceptSetError, demo_concept
from .find import find_concept_neurons
from .find_settings import FindSettings, build_scorer
from .interventions import (Dampen, Intervention, InterventionSpec, Mean, NeuronSelection, Transport, Zero,
                            fit_transport, turn_off)
from .models import LoadedModel, ModelLoadError, UnsupportedModelError, load_model, wrap
from .runs import Run, RunError

__version__ = "0.1.0"
load_run = Run.load

__all__ = ["ConceptSet", "ConceptSetError", "demo_concept", "find_concept_neurons", "FindSettings", "build_scorer",
           "Intervention", "InterventionSpec", "Zero", "Mean", "Dampen", "Transport", "fit_transport",
           "NeuronSelection", "turn_off", "LoadedModel", "ModelLoadError", "UnsupportedModelError", "load_model", "wrap",
           "Run", "RunError", "load_run"]
