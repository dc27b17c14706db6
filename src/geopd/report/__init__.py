"""Results people read: tidy aggregates, paper tables, figures and the claims check.

gridfile    the grid description (grid.json) and the per-checkpoint inputs it expects
aggregate   those per-checkpoint diagnostics and evaluations -> tidy CSVs
data        the grid description + aggregated results, the look-ups shared below, and which
            runs did not move
paper       the papers' published numbers (one place)
tables      Table 1, update masks, EffOPD spectral (+ speedup), accuracy, teachers
figures/    one module per figure family (Fig. 2-7, training curves, EffOPD accuracy)
claims      each qualitative claim, the deciding numbers, reproduced yes / no / insufficient data
evidence    what a claim needs and what voids it (missing inputs, runs that did not move;
            missing.md)
build       the whole report from whatever exists (`geopd report partial`, report_partial rule)
markdown    CSV + Markdown writers (cells formatted here, laid out by geopd.io.table)
The command line is geopd.cli.report.
"""
