"""The configuration reference, generated from the config dataclasses (their fields, types, defaults
and the comment on each field's line), so the documentation cannot drift from the code:

    python -m pipeline.reference            # print it (Markdown)
    python -m pipeline.reference --write    # replace the block between the markers in README.md
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

from pipeline.config import PipelineConfig

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- configuration reference: python -m pipeline.reference --write -->", "<!-- end of reference -->"


def field_comments(cls: type) -> dict[str, str]:
    """The comment at the end of each field's line in the class body, with the comment lines that
    continue it below."""
    source = inspect.getsource(cls)
    comments, names = {}, {f.name for f in dataclasses.fields(cls)}
    field = None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.start[1] == 4:
            field = token.string if token.string in names else None
        elif token.type == tokenize.COMMENT and field is not None:
            comments[field] = f"{comments.get(field, '')} {token.string.lstrip('# ').strip()}".strip()
    return comments


def _type(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is tuple:
        return f"list of {_type(args[0])}"
    if origin is not None and type(None) in args:
        return f"{_type(next(a for a in args if a is not type(None)))} or null"
    return getattr(hint, "__name__", str(hint))


def _default(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value) if value != "" else '""'


def reference() -> str:
    """Markdown: a table per config section (key, type, default, what it does)."""
    parts = []
    defaults = PipelineConfig()
    top = [f for f in dataclasses.fields(PipelineConfig) if not dataclasses.is_dataclass(getattr(defaults, f.name))]
    hints = typing.get_type_hints(PipelineConfig)
    top_comments = field_comments(PipelineConfig)
    parts.append("| key | type | default | |\n|---|---|---|---|")
    parts += [f"| `{f.name}` | {_type(hints[f.name])} | `{_default(getattr(defaults, f.name))}` | "
              f"{top_comments.get(f.name, '')} |" for f in top]
    for section in (f for f in dataclasses.fields(PipelineConfig) if f not in top):
        cls = type(getattr(defaults, section.name))
        hints, comments = typing.get_type_hints(cls), field_comments(cls)
        parts.append(f"\n**`{section.name}`**\n\n| key | type | default | |\n|---|---|---|---|")
        parts += [f"| `{section.name}.{f.name}` | {_type(hints[f.name])} | `{_default(getattr(cls(), f.name))}` | "
                  f"{comments.get(f.name, '')} |" for f in dataclasses.fields(cls)]
    return "\n".join(parts) + "\n"


def readme_block(text: str) -> tuple[int, int]:
    """Where the reference lies in README's text: between the two marker lines."""
    return text.index(BEGIN) + len(BEGIN) + 1, text.index(END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"update the reference block in {README.name}")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.write:
        print(reference(), end="")
        return 0
    text = README.read_text()
    start, end = readme_block(text)
    README.write_text(text[:start] + reference() + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
