"""What one model family costs in code: the lines of its backbone adapter, and its token layout and block names.

    python benchmarks/family_lines.py

For each flow family: the adapter module in src/zeroedit/backbones/ (all lines, and code lines: without blank
lines, comments and docstrings), its TokenLayout entry (control/seam.py LAYOUTS; a layout class of its own counts
its class's code lines) and its BLOCKS entry (control/layers.py). No family has a copy of an attention processor:
control/seam.py runs diffusers' own. The tiny builders and the tests are not counted.
"""
from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "zeroedit"
sys.path[:0] = [str(ROOT / "src")]

FAMILIES = {  # family -> (adapter module, transformer class, layout class written for it alone or None)
    "FLUX.2": ("flux2.py", "Flux2Transformer2DModel", None),
    "Qwen-Image": ("qwenimage.py", "QwenImageTransformer2DModel", None),
    "Z-Image": ("zimage.py", "ZImageTransformer2DModel", "ImageFirst"),
    "Chroma": ("chroma.py", "ChromaTransformer2DModel", None),
}


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def class_code_lines(path: Path, name: str) -> int:
    source = path.read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)
    return code_lines("\n".join(source.splitlines()[node.lineno - 1:node.end_lineno]))


def main():
    from zeroedit.control.layers import BLOCKS
    from zeroedit.control.seam import LAYOUTS
    print("| family | adapter (lines / code lines) | token layout | block names | processor copies |")
    print("|---|---|---|---|---|")
    for family, (module, transformer, layout) in FAMILIES.items():
        source = (SRC / "backbones" / module).read_text()
        own = f"`{layout}`, {class_code_lines(SRC / 'control' / 'seam.py', layout)} code lines" if layout else \
            f"1 line (`{type(LAYOUTS[transformer]).__name__}`)"
        blocks = "1 line" if transformer in BLOCKS else "FLUX.1's names (0 lines)"
        print(f"| {family} | {len(source.splitlines())} / {code_lines(source)} | {own} | {blocks} | 0 |")


if __name__ == "__main__":
    main()
