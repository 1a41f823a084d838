"""mlship.cluster.deployed.default_image: the recorded pinned image replaces mlship.yaml's tag
only when that tag is the recorded digest."""

from __future__ import annotations

from mlship.cluster.deployed import Deployed, default_image, pinned

DIGEST = "sha256:" + "c" * 64
PINNED = f"127.0.0.1:5000/ml/iris@{DIGEST}"


def _entry(image: str) -> Deployed:
    return Deployed(image, DIGEST, "promote", "2026-12-07T10:00:00Z")


def test_the_tag_of_the_recorded_digest_keeps_the_pinned_image() -> None:
    asked: list[str] = []

    def resolve(image: str) -> str:
        asked.append(image)
        return DIGEST

    assert default_image("127.0.0.1:5000/ml/iris:2", _entry(PINNED), resolve) == PINNED
    assert asked == ["127.0.0.1:5000/ml/iris:2"]


def test_everything_else_is_sent_as_mlship_yaml_says() -> None:
    def never(image: str) -> str:
        raise AssertionError(f"the registry is not asked about {image}")

    assert default_image("127.0.0.1:5000/ml/iris:2", None, never) is None
    assert default_image(PINNED, _entry(PINNED), never) is None  # already the same
    assert default_image(f"127.0.0.1:5000/ml/iris@sha256:{'d' * 64}", _entry(PINNED),
                         never) is None  # the user's own pin
    assert default_image("127.0.0.1:5000/ml/other:2", _entry(PINNED), never) is None
    tagged = _entry("127.0.0.1:5000/ml/iris:2")  # the template names a tag: nothing to keep
    assert default_image("127.0.0.1:5000/ml/iris:3", tagged, never) is None
    assert default_image("127.0.0.1:5000/ml/iris:2", _entry("not a reference!"), never) is None
    moved = default_image("127.0.0.1:5000/ml/iris:2", _entry(PINNED), lambda _: "sha256:" +
                          "e" * 64)
    assert moved is None
    assert pinned("127.0.0.1:5000/ml/iris:2", DIGEST) == PINNED
    assert pinned(PINNED, None) == PINNED
