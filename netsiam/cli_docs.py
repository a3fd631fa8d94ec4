"""The flag reference at the end of ``docs/cli.md``, made from the parsers themselves so it cannot drift:
``python -m netsiam.cli_docs`` rewrites it (a test checks it is current)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netsiam.cli_args import HelpFormatter, build_parser, iter_parsers

__all__ = ["BEGIN", "END", "flags_markdown", "main", "rewrite"]

BEGIN = "<!-- flags: made by `python -m netsiam.cli_docs`; do not edit by hand -->"
END = "<!-- end of flags -->"


def _names(a: argparse.Action) -> str:
    if not a.option_strings:
        return f"`{a.metavar or a.dest}`"
    shown = ", ".join(f"`{o}`" for o in a.option_strings)
    takes = a.nargs != 0 and not isinstance(a, argparse._StoreConstAction | argparse._HelpAction)
    return shown + (f" {a.metavar or a.dest.upper()}" if takes else "")


def _help(a: argparse.Action, fmt: HelpFormatter) -> str:
    text = fmt._expand_help(a)   # what --help shows, %(default)s filled in
    if a.required and a.option_strings:
        text += " (required)"
    if a.choices is not None and not a.option_strings:
        text += f"; one of {', '.join(map(str, a.choices))}"
    return text.replace("|", "\\|")


def flags_markdown() -> str:
    """One table per command that takes flags (a verb, or a verb's kind): flag, what it does. ``--config``,
    which every verb takes, is said once above them."""
    out = ["Every verb also takes `--config FILE` ([Configuration](#configuration)) and `-h`/`--help`.", ""]
    for cmd, parser in iter_parsers(build_parser()):
        actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction) and a.dest != "config"]
        if cmd == "netsiam" or any(isinstance(a, argparse._SubParsersAction) for a in actions):
            continue
        fmt = HelpFormatter(cmd)
        out += [f"### `{cmd}`", "", "| flag | what |", "|---|---|"]
        out += [f"| {_names(a)} | {_help(a, fmt)} |" for a in actions]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def rewrite(path: Path) -> bool:
    """Put the current reference between the markers of ``path`` (appended if absent); True if it changed."""
    text = path.read_text()
    block = f"{BEGIN}\n\n{flags_markdown()}\n{END}"
    if BEGIN in text and END in text:
        new = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        new = text.rstrip() + "\n\n## Every flag\n\n" + block + "\n"
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    print(f"{path}: {'rewritten' if rewrite(path) else 'already current'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
