"""LaTeX: the report's tables as booktabs `table` environments, and report.tex, a document holding them all.

Every text that reaches LaTeX is escaped: names may hold `_` (`test_2016`), and the report's own
symbols (the real minus, ±, ·, ×, †) become their LaTeX commands, so the files need no package for
them. A table's caption is its title and note, the Markdown `code` spans of the note in typewriter.
report.tex compiles on its own (pdflatex, with booktabs); each table is also written to `<name>.tex`
beside it, a fragment to `\\input` into a paper whose preamble loads booktabs.
"""

from __future__ import annotations

from xattn_ray.report.tables import MINUS, PLUS_MINUS, Cell, Number, Table

_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    MINUS: "$-$", PLUS_MINUS: r"$\pm$", "\u00b7": r"$\cdot$", "\u00d7": r"$\times$", "\u2264": r"$\leq$",
    "\u2265": r"$\geq$", "\u2020": r"\dag{}",
}


def latex_escape(text: str) -> str:
    """`text` as LaTeX that typesets it: special characters escaped, the report's symbols as commands."""
    return "".join(_ESCAPES.get(character, character) for character in text)


def latex_prose(text: str) -> str:
    """A sentence of the report (Markdown with `code` spans) as LaTeX: code spans in \\texttt, all escaped."""
    return "".join(rf"\texttt{{{latex_escape(piece)}}}" if i % 2 else latex_escape(piece)
                   for i, piece in enumerate(text.split("`")) if piece)


def latex_cell(cell: Cell) -> str:
    """A cell's LaTeX: a `Number`'s text, in \\textbf when bold, then its mark; text escaped."""
    if isinstance(cell, Number):
        text = latex_escape(cell.text())
        if not text:
            return ""
        return (rf"\textbf{{{text}}}" if cell.bold else text) + latex_escape(cell.mark)
    return latex_escape(str(cell))


def latex_table(table: Table, label_prefix: str) -> str:
    """A `table` environment: the caption, a label `tab:<label_prefix>-<name>`, and a booktabs tabular
    whose columns of figures are right-aligned."""
    spec = "".join("r" if table.numeric(index) else "l" for index in range(len(table.columns)))
    caption = table.title + (". " + table.note if table.note else "")
    lines = [r"\begin{table}[htbp]", r"  \centering", rf"  \caption{{{latex_prose(caption)}}}",
             rf"  \label{{tab:{label_prefix}-{table.name}}}", rf"  \begin{{tabular}}{{{spec}}}", r"    \toprule",
             "    " + " & ".join(latex_escape(column.name) for column in table.columns) + r" \\", r"    \midrule"]
    lines += ["    " + " & ".join(map(latex_cell, row)) + r" \\" for row in table.rows]
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_document(title: str, facts: list[str], tables: list[Table], label_prefix: str) -> str:
    """report.tex: an article with `title`, a list of `facts` (Markdown sentences) and every table."""
    lines = ["% The tables of the report beside this file (report.md), written by `xattn-ray report`.",
             "% Compile it as it is (pdflatex report.tex), or \\input a table into a paper that loads booktabs:",
             "% each table environment below is also a file of its own here, named as its CSV ("
             + ", ".join(f"{table.name}.tex" for table in tables) + ").",
             r"\documentclass{article}", r"\usepackage[T1]{fontenc}", r"\usepackage[utf8]{inputenc}",
             r"\usepackage[margin=2cm]{geometry}", r"\usepackage{booktabs}", "", r"\begin{document}",
             rf"\section*{{{latex_prose(title)}}}", ""]
    if facts:
        lines += [r"\begin{itemize}", *(rf"  \item {latex_prose(fact)}" for fact in facts), r"\end{itemize}", ""]
    for table in tables:
        lines += [latex_table(table, label_prefix)]
    return "\n".join(lines + [r"\end{document}"]) + "\n"
