"""Configuration loading: presets, validation, and the params.yaml / environment.yml contracts."""

import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from tokenset.config import (
    SECTIONS,
    DataConfig,
    DenoiserConfig,
    EvalConfig,
    FSDDConfig,
    GenerationConfig,
    SigmaSchedule,
    TokenizerConfig,
    TrainConfig,
    load_params,
)

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, doc):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_every_section_of_the_repo_params_loads():
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    tok = load_params(ROOT / "params.yaml", "tokenizer")
    for section in SECTIONS:
        if section not in doc:
            continue
        extra = {}
        if section == "denoiser":
            extra = dict(codebook_size=tok.codebook_size, total=tok.num_tokens)
        cfg = load_params(ROOT / "params.yaml", section, **extra)
        assert isinstance(cfg, SECTIONS[section])


@pytest.mark.parametrize("cls", [DataConfig, TokenizerConfig, TrainConfig, FSDDConfig, GenerationConfig])
@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_presets_build(cls, name):
    cfg = cls.preset(name)
    assert isinstance(cfg, cls)
    assert cls.preset(name) == cfg  # frozen dataclasses compare by value


def test_preset_overrides_and_frozen():
    cfg = TokenizerConfig.preset("tiny", ordered=True)
    assert cfg.ordered is True
    with pytest.raises(Exception):
        cfg.ordered = False  # type: ignore[misc]
    assert cfg.replace(num_tokens=4).num_tokens == 4


def test_paper_tokenizer_matches_the_paper():
    cfg = TokenizerConfig.preset("paper")
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.image_size) == (768, 12, 12, 16, 256)
    assert (cfg.num_tokens, cfg.codebook_size, cfg.token_dim) == (128, 4096, 12)


def test_denoiser_preset_takes_sizes_from_caller():
    cfg = DenoiserConfig.preset("S", codebook_size=4096, total=128)
    assert (cfg.width, cfg.depth, cfg.heads) == (384, 12, 6)
    with pytest.raises(ValueError, match="missing required key.*codebook_size"):
        DenoiserConfig.preset("S", total=128)


def test_load_preset_with_override(tmp_path):
    path = write(tmp_path, {"tokenizer": {"preset": "tiny", "num_tokens": 4}})
    cfg = load_params(path, "tokenizer")
    assert cfg.num_tokens == 4 and cfg.width == TokenizerConfig.preset("tiny").width


def test_enum_and_tuple_coercion(tmp_path):
    path = write(tmp_path, {"fsdd": {"sigma_schedule": "linear"}, "eval": {
        "num_samples": 10, "seeds": [0, 1], "extractor": "dataset"}, "generation": {
        "seeds": [0, 1], "samples_per_class": 2, "extractor": "dataset", "guidance_scales": [1, 2.5]}})
    assert load_params(path, "fsdd").sigma_schedule is SigmaSchedule.LINEAR
    assert load_params(path, "eval").seeds == (0, 1)
    assert load_params(path, "generation").guidance_scales == (1.0, 2.5)


@pytest.mark.parametrize(
    "section,doc,match",
    [
        ("tokenizer", {"preset": "tiny", "num_tokenz": 3}, r"section 'tokenizer'.*unknown key.*num_tokenz"),
        ("tokenizer", {"image_size": 32}, r"section 'tokenizer'.*missing required key.*patch_size"),
        ("tokenizer", {"preset": "tiny", "num_tokens": "8"}, r"key 'num_tokens'.*expected an integer"),
        ("tokenizer", {"preset": "tiny", "num_tokens": 8.0}, r"key 'num_tokens'.*expected an integer"),
        ("tokenizer", {"preset": "tiny", "ordered": "yes"}, r"key 'ordered'.*expected true or false"),
        ("tokenizer", {"preset": "tiny", "pixel_head": "mlp"}, r"key 'pixel_head'.*expected one of"),
        ("tokenizer", {"preset": "huge"}, r"key 'preset' is 'huge'"),
        ("tokenizer", {"preset": "tiny", "patch_size": 5}, r"image_size.*multiple of patch_size"),
        ("fsdd", {"sigma_schedule": "sigmoid75_0.84"}, r"key 'sigma_schedule'.*expected one of"),
        ("fsdd", {"top_p": 1.5}, r"key 'top_p'.*\(0, 1\]"),
        ("train", {"preset": "tiny", "lr": "fast"}, r"key 'lr'.*expected a number"),
        ("data", {"preset": "tiny", "name": "cifar"}, r"key 'name'.*expected one of"),
    ],
)
def test_bad_params_name_key_section_and_file(tmp_path, section, doc, match):
    path = write(tmp_path, {section: doc})
    with pytest.raises(ValueError, match=match) as info:
        load_params(path, section)
    assert str(path) in str(info.value)


def test_missing_section_and_file(tmp_path):
    path = write(tmp_path, {"data": {"preset": "tiny"}})
    with pytest.raises(ValueError, match="section 'tokenizer' is missing"):
        load_params(path, "tokenizer")
    with pytest.raises(ValueError, match="unknown section 'nope'"):
        load_params(path, "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_params(tmp_path / "absent.yaml", "data")


def _requirement_name_and_spec(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", req)
    assert m, req
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    py = dict(_requirement_name_and_spec(r) for r in reqs)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = dict(_requirement_name_and_spec(r) for r in pip_list if not r.startswith("-e"))
    assert conda == py
    assert py["torch"] == "==2.14.1" and py["torchvision"] == "==0.29.1"


def test_eval_study_samples():
    from tokenset.config import EvalConfig
    assert EvalConfig.preset("small").study_count == 64 and EvalConfig.preset("tiny").study_count == 64
    assert EvalConfig.preset("paper").study_count == 50_000 and "study_samples" not in EvalConfig.preset("paper").to_dict()
    with pytest.raises(ValueError, match="study_samples"):
        EvalConfig.preset("small", study_samples=1)


def test_eval_reference_samples_and_tokenizer_seeds():
    small = EvalConfig.preset("small")
    assert small.reference_samples == 1000 and small.tokenizer_seeds == (0, 1, 2)
    paper = EvalConfig.preset("paper")
    assert "reference_samples" not in paper.to_dict() and paper.tokenizer_seeds == (0,)
    with pytest.raises(ValueError, match="reference_samples"):
        EvalConfig.preset("small", reference_samples=1)
    with pytest.raises(ValueError, match="tokenizer_seeds"):
        EvalConfig.preset("small", tokenizer_seeds=(0, 0))
    with pytest.raises(ValueError, match="tokenizer_seeds"):
        EvalConfig.preset("small", tokenizer_seeds=())


def test_generation_section():
    from tokenset import generators
    small = GenerationConfig.preset("small")
    assert small.seeds == (0, 1, 2) and small.samples_per_class == 100  # claim 6: 3 trained, 1000 samples each
    assert small.extractor == "dataset" and small.reference_samples == 0  # all validation images
    scoring = small.scoring(EvalConfig.preset("small"))
    assert scoring.extractor == "dataset" and scoring.dataset_extractor_steps == small.extractor_steps
    assert scoring.reference_samples == EvalConfig.preset("small").reference_samples  # the rest unchanged
    assert small.generators == ("fsdd", "masked_sorted", "ar_sorted")  # claim 6's three; masked_ordered optional
    assert GenerationConfig.preset("tiny").generators == tuple(generators.GENERATORS)  # the smoke run trains all
    assert GenerationConfig.preset("small", generators=["fsdd", "masked_ordered"]).generators == ("fsdd",
                                                                                                  "masked_ordered")
    for key, value in (("seeds", (1, 1)), ("seeds", ()), ("samples_per_class", 0), ("guidance_scales", (-1.0,)),
                       ("reference_samples", 1), ("grid_per_class", 0), ("generators", ("masked_sorted",)),
                       ("generators", ("fsdd", "fsdd")), ("generators", ("fsdd", "gan"))):
        with pytest.raises(ValueError, match=f"'{key}'"):
            GenerationConfig.preset("small", **{key: value})


def test_runtime_device_section(tmp_path):
    from tokenset.config import RuntimeConfig
    from tokenset.device import resolve_device
    assert RuntimeConfig().device == "auto" and RuntimeConfig(device="cuda:1").device == "cuda:1"
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match="device"):
            RuntimeConfig(device=bad)
    path = tmp_path / "p.yaml"
    path.write_text("runtime:\n  device: cpu\n")
    assert load_params(path, "runtime").device == "cpu"
    path.write_text("runtime:\n  device: tpu\n")
    with pytest.raises(ValueError, match="device"):
        load_params(path, "runtime")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="expected auto, cpu"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees 0 CUDA device"):
            resolve_device("cuda")
