"""Stage 3: config + model facts -> a ``Bundle`` of files (Dockerfile, manifests, CI pipelines)."""
