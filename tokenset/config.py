"""Typed, frozen configuration: one dataclass per ``params.yaml`` section, plus size presets, and their loading.

Every section of ``params.yaml`` maps onto one dataclass (``SECTIONS``). ``load_params(path, section)``
reads a section and validates it: an unknown key, a missing required key or a value of the wrong type raises
a ``ValueError`` naming the key, the section and the file. A section may start from a preset::

    tokenizer:
      preset: small        # tiny | small | paper
      num_tokens: 48       # any field overrides the preset

Presets live in each class's ``PRESETS`` registry (as DiT's ``DiT_models``) and are reached in code as
``TokenizerConfig.preset("tiny", ordered=True)``.

This module is the one place to import configuration from: it holds the loading (``SECTIONS``, ``load_params``,
``project_root``) and re-exports the parts it is built from, each one concept: ``tokenset.config_schema`` (the
``Section`` mixin and ``from_mapping``'s validation), ``tokenset.config_sections`` (the pipeline's sections) and
``tokenset.config_studies`` (the ablation and sweep sections). Together they import nothing else from tokenset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tokenset.config_schema import Section, from_mapping
from tokenset.config_sections import (DataConfig, DenoiserConfig, EvalConfig, FSDDConfig, GenerationConfig, NoiseKind,
                                      RuntimeConfig, SigmaSchedule, TokenizerConfig, TrainConfig)
from tokenset.config_studies import ABLATION_ARMS, STUDY_LOG_ROWS, AblationConfig, SweepConfig, study_train

__all__ = ["Section", "from_mapping", "SigmaSchedule", "NoiseKind", "DataConfig", "TokenizerConfig", "TrainConfig",
           "DenoiserConfig", "FSDDConfig", "EvalConfig", "GenerationConfig", "RuntimeConfig", "ABLATION_ARMS",
           "STUDY_LOG_ROWS", "study_train", "AblationConfig", "SweepConfig", "SECTIONS", "load_params", "project_root"]


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "train": TrainConfig,
    "denoiser": DenoiserConfig,
    "fsdd": FSDDConfig,
    "train_generator": TrainConfig,
    "eval": EvalConfig,
    "generation": GenerationConfig,
    "ablation": AblationConfig,
    "sweep": SweepConfig,
    "runtime": RuntimeConfig,
}


# --------------------------------------------------------------------------------------------- loading


def load_params(path: str | Path, section: str, **context: Any) -> Any:
    """Read ``section`` of the YAML file ``path`` into its dataclass (see ``SECTIONS``).

    ``context`` supplies values that come from elsewhere rather than from the file (e.g. the denoiser's
    ``codebook_size`` and ``total``, which are the tokenizer's); keys in the file win over the preset,
    context wins over both. Raises ValueError naming the key, section and file for unknown keys, missing
    required keys and wrong types; FileNotFoundError for a missing file.
    """
    path = Path(path)
    if section not in SECTIONS:
        raise ValueError(f"{path}: unknown section {section!r}; expected one of {sorted(SECTIONS)}")
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    with path.open() as fh:
        doc = yaml.safe_load(fh) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level, got {type(doc).__name__}")
    if section not in doc:
        raise ValueError(f"{path}: section {section!r} is missing")
    raw = doc[section]
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: section {section!r} must be a mapping, got {type(raw).__name__}")
    cls = SECTIONS[section]
    values = dict(raw)
    base: dict[str, Any] = {}
    if "preset" in values:
        name = values.pop("preset")
        if name not in cls.PRESETS:
            raise ValueError(
                f"{path}: section {section!r}: key 'preset' is {name!r}; expected one of {sorted(cls.PRESETS)}"
            )
        base = dict(cls.PRESETS[name])
    return from_mapping(cls, {**base, **values, **context}, where=f"{path}: section {section!r}")


def project_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: the working directory) holding params.yaml and
    pyproject.toml. Notebooks chdir there first, so the same relative paths work under papermill and nbval
    (nbval starts kernels in the notebook's folder)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    raise FileNotFoundError(f"no tokenset project (params.yaml + pyproject.toml) at or above {here}")
