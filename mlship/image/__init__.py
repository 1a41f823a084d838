"""Stage 4: a rendered ``Bundle`` -> an image, built with the Docker SDK, smoke-tested, pushed."""
