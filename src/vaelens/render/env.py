"""The environment block (`vaelens env`, and the head of `vaelens validate`): one line per fact."""

from __future__ import annotations

from vaelens.envinfo import Environment
from vaelens.render.tables import human_bytes


def render_environment(env: Environment) -> str:
    """Environment -> aligned `name: value` lines (unknowns as "-"), one per device at the end."""
    rows = [
        ("vaelens", env.vaelens),
        ("python", env.python),
        ("platform", env.platform),
        ("torch", env.torch),
        ("diffusers", env.diffusers),
        ("cuda (torch build)", env.cuda),
        ("cudnn", env.cudnn),
        ("nvidia driver", env.driver),
        ("cuda available", "yes" if env.cuda_available else "no"),
        ("cpu threads (torch)", str(env.cpu_threads)),
    ]
    if env.packages:
        rows.append(("packages", ", ".join(f"{n} {v}" for n, v in env.packages)))
    for d in env.devices:
        rows.append((f"cuda:{d.index}", f"{d.name}, {human_bytes(d.total_bytes)}, compute {d.capability}, "
                                         f"{d.multiprocessors} SMs"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v if v not in (None, '') else '-'}" for k, v in rows)
