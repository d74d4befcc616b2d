"""Everything a person sees: text tables, JSON shapes, narration, figures.

tables.py    families / shapes tables and JSON, byte and shape formatting
narrate.py   `vaelens explain`: the narrated walk-through
memory.py    trace and memory tables and JSON
pipeline.py  pipeline tables, timeline and plot
figures.py   PNG figures: latent channel grids, error maps, comparisons
"""
