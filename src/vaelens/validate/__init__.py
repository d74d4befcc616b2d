"""`vaelens validate`: every prediction checked on the user's own GPU, judged by one tolerance table.

validate(models, device=, quick=, dry_run=) -> ValidationReport (rows of predicted vs measured, pass/fail)

cases.py       what runs (sections, families, sizes, dtypes)
tolerances.py  the one tolerance table and judge()
backend.py     the measuring interface; cuda.py its CUDA implementation (through vaelens.memory.measure)
emulation.py   the precision emulation's figures, when vaelens.precision exists
run.py         the orchestration;  rows.py  the result types (Row, ValidationReport)
"""

from vaelens.validate.cases import DEFAULT_MODELS, Case, Section, plan_cases
from vaelens.validate.rows import Row, ValidationReport
from vaelens.validate.run import validate
from vaelens.validate.tolerances import TOLERANCES, Check, Tolerance, judge

__all__ = [
    "DEFAULT_MODELS",
    "TOLERANCES",
    "Case",
    "Check",
    "Row",
    "Section",
    "Tolerance",
    "ValidationReport",
    "judge",
    "plan_cases",
    "validate",
]
