"""Results people read: tidy aggregates, paper tables, figures and the claims check.

aggregate   per-checkpoint diagnostics and evaluations -> tidy CSVs
data        the grid description + aggregated results, and the look-ups shared below
paper       the papers' published numbers (one place)
tables      Table 1, update masks, EffOPD spectral (+ speedup), accuracy, teachers
figures/    one module per figure family (Fig. 2-7, training curves, EffOPD accuracy)
claims      each qualitative claim, the deciding numbers, reproduced yes / no / insufficient data
evidence    expected inputs, what is missing, runs that did not move (voids claims; missing.md)
build       the whole report from whatever exists (`geopd report partial`, report_partial rule)
markdown    CSV + Markdown writers
cli         `geopd report SUB`
"""
