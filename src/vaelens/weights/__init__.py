"""Local weights: diffusers folders, single-file checkpoints, the Hugging Face cache; family detection.

load.py         load_vae(): file or folder -> LoadedVae (module with weights, its FamilySpec, layout)
checkpoints.py  reading state dicts (safetensors; pickles only when allowed); the HF cache is vaelens.hfcache
demo.py         the demo VAE and sample image shipped in vaelens/data
"""

from vaelens.weights.load import Layout, LoadedVae, cast_module, load_vae

__all__ = ["Layout", "LoadedVae", "cast_module", "load_vae"]
