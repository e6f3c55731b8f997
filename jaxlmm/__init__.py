"""jaxlmm: linear mixed models in JAX — lme4's estimates, batched, differentiable.

Examples:
    >>> import jaxlmm
    >>> df = jaxlmm.datasets.load("sleepstudy")
    >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).fit()
    >>> round(r.llf, 4)
    -871.8141
"""

from ._import_gc import freeze_imports as _freeze_imports
from ._import_gc import pause_collector as _pause_collector

_collector_was_enabled = _pause_collector()

from . import datasets as datasets
from . import plot as plot
from . import errors as errors
from ._batch import BatchResults as BatchResults
from ._batch import DatasetResults as DatasetResults
from ._config import enable_compilation_cache as _enable_compilation_cache
from ._config import float64 as float64
from ._compile_options import jit as jit
from ._memory_maps import install as _install_memory_map_guard
from ._design import Design as Design
from ._fit import FitArrays as FitArrays
from ._fit import fit_arrays as fit_arrays
from ._fit import deviance as deviance
from ._lrtest import LRTestResult as LRTestResult
from ._many_datasets import fit_datasets as fit_datasets
from ._lrtest import lrtest as lrtest
from ._model import MixedLM as MixedLM
from ._results import MixedLMResults as MixedLMResults
from .errors import (
    ConvergenceWarning as ConvergenceWarning,
    DataError as DataError,
    FormulaError as FormulaError,
    IdentifiabilityError as IdentifiabilityError,
    IdentifiabilityWarning as IdentifiabilityWarning,
    IgnoredOptionWarning as IgnoredOptionWarning,
    JaxlmmError as JaxlmmError,
    MissingDataError as MissingDataError,
    ModelTooLargeError as ModelTooLargeError,
    ResourceLimitWarning as ResourceLimitWarning,
    SingularFitWarning as SingularFitWarning,
)

__version__ = "0.1.0"

_enable_compilation_cache()
_install_memory_map_guard()
_freeze_imports(_collector_was_enabled)

__all__ = [
    "BatchResults",
    "DatasetResults",
    "fit_datasets",
    "ConvergenceWarning",
    "DataError",
    "Design",
    "FitArrays",
    "FormulaError",
    "IdentifiabilityError",
    "IdentifiabilityWarning",
    "IgnoredOptionWarning",
    "JaxlmmError",
    "MissingDataError",
    "ModelTooLargeError",
    "ResourceLimitWarning",
    "MixedLM",
    "MixedLMResults",
    "SingularFitWarning",
    "datasets",
    "plot",
    "errors",
    "fit_arrays",
    "deviance",
    "LRTestResult",
    "lrtest",
    "float64",
    "jit",
]
