"""The real-weights engine: load -> read inputs -> batch -> encode/decode -> typed results -> safe outputs.

Every real-weights command, the report and the dataset encoder run through here.

verbs.py     encode / decode: the one public door per verb (vaelens.encode, vaelens.decode)
steps.py     one step on a loaded VAE: dtype policy, input checks, per-item NaN retry in fp32, posterior,
             time and memory (encode_step / moments_step: the batch functions the dataset encoder calls)
roundtrip.py pixels -> latent -> pixels scored; roundtrip_files (`vaelens roundtrip`)
files.py     encode_files (`vaelens encode`), decode_file (`vaelens decode`)
inspect.py   inspect_files (`vaelens inspect`)
inputs.py    weights to load, input files expanded and read, fps / frames / batch checks
naming.py    the files decode writes per batch item
"""

from vaelens.run.files import DecodeRun, EncodeRun, decode_file, encode_files
from vaelens.run.inputs import Weights
from vaelens.run.inspect import InspectRun, inspect_files
from vaelens.run.roundtrip import Roundtrip, RoundtripRun, roundtrip, roundtrip_files
from vaelens.run.steps import StepReport, Upcast, encode_step, moments_step, resolve_dtype
from vaelens.run.verbs import Decoded, Encoded, decode, encode

__all__ = [
    "DecodeRun",
    "Decoded",
    "EncodeRun",
    "Encoded",
    "InspectRun",
    "Roundtrip",
    "RoundtripRun",
    "StepReport",
    "Upcast",
    "Weights",
    "decode",
    "decode_file",
    "encode",
    "encode_files",
    "encode_step",
    "inspect_files",
    "moments_step",
    "resolve_dtype",
    "roundtrip",
    "roundtrip_files",
]
