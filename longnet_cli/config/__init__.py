"""The recipe: its schema, YAML loading, validation with key paths, and ``--set`` overrides.

    errors.py         RecipeError (an InputError: exit code 2), naming key path and file
    kinds.py          field kinds: how each kind of value is checked and stored
    sections.py       the data, train, checkpoint, log, eval and parallel sections
    model_section.py  the model section, derived from model.config.LongNetConfig
    schema.py         Recipe (the seven sections), building one from dicts, did-you-mean
    load.py           reading YAML, ``--set`` overrides, load_recipe
    corpus.py         check_against_corpus: what only the corpus can tell
    resume.py         SAFE_ON_RESUME: the keys a resumed run may change

Each stage gets its own section (``recipe.train``, ``recipe.model`` ...), not the whole recipe.
No torch import: loading a recipe stays cheap for the CLI.
"""

from longnet_cli.config.errors import RecipeError
from longnet_cli.config.load import load_recipe
from longnet_cli.config.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe"]
