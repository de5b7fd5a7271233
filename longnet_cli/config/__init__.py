"""The recipe: its schema, YAML loading, validation with key paths, and ``--set`` overrides."""
