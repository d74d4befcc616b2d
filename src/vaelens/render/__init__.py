"""Everything a person sees: text tables, JSON shapes, narration, figures. `render_*` returns text,
`plot_*` draws a figure, `*_json` returns the JSON-able dict of a command's --json.

tables.py     families / shapes tables and JSON, shape formatting (bytes: vaelens.units)
narrate.py    `vaelens explain`: the narrated walk-through
memory.py     trace and memory tables and JSON
pipeline.py   `vaelens pipeline`: tables, timeline, budget, JSON, plot
codec.py      `vaelens encode / decode / roundtrip`: step lines and JSON (one shape for every step report)
latents.py    `vaelens inspect`: channel table, JSON, figures
figures.py    PNG figures: latent channel grids, error maps, comparisons, RGB approximation
tiling.py, timeline.py, svg.py, report.py   tiling plans, memory timelines, the HTML report
datasets.py   `vaelens stats / cache`: tables and JSON
"""
