"""README's configuration reference is generated from the config dataclasses and must match them."""
from pipeline import reference


def test_readme_reference_is_up_to_date():
    text = reference.README.read_text()
    start, end = reference.readme_block(text)
    assert text[start:end] == reference.reference(), "README is out of date: run `python -m pipeline.reference --write`"


def test_every_key_is_documented_with_its_meaning():
    lines = [line for line in reference.reference().splitlines() if line.startswith("| `")]
    assert len(lines) >= 60
    assert [line for line in lines if line.endswith("|  |")] == []  # each field has its comment
    assert "| `train.init_from` | str | `\"\"` | online update:" in reference.reference()
