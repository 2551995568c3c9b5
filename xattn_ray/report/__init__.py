"""The paper-style report of one experiment: Markdown, LaTeX and CSV tables and PNG figures from the results store.

Everything is read from stored rows and stored files; nothing is trained or decoded again, so a report
of a finished study takes seconds and never imports the model. Numbers come from rows whose status is
`ok` only (runs that failed or were stopped are listed as missing); means and standard deviations are
over seeds, the standard deviation the sample one (n - 1), left out when a cell has a single seed. The
table helpers take the store's rows as a pandas DataFrame (`ResultsStore.read`).

A transfer study (Gheini et al., 2021) gets Table 2, paired tests against `body`, Table 3 (forgetting),
zero-shot, lexicon induction and cost (transfer.py); a code-switching study gets BLEU by variant on
single sentences, seen and unseen code-switched pairs, tests of xlquery against standard attention, and
cost (codeswitch.py). The paired tests (paired.py: bootstrap resampling or approximate randomization,
on BLEU and chrF) run on the stored translations, seed by seed (significance.py). findings.py checks
each paper's claims on the rows (held / not held / not measured, with the tests behind each verdict);
the report opens with them and `xattn-ray run` prints the same lines. Each table is built once as data
(tables.py) and written as Markdown (markdown.py), LaTeX (latex.py) and CSV. build.py puts it together
(`report.build.build_report`, the entry point); formats.py holds the output formats of `xattn-ray results`.
"""
