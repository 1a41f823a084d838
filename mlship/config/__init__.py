"""Stage 1: ``mlship.yaml`` -> a typed, frozen ``MlshipConfig`` (schema, fields, errors,
loading)."""
