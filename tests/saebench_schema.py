"""SAEBench's absorption output schema, copied field for field (types, required or optional, defaults,
constraints and validators) from its pydantic models, so tests validate actstore's SAEBench JSON the way SAEBench
does without importing it (sae-bench is not a dependency; its package pulls in torch models and datasets).

Source: github.com/adamkarvonen/SAEBench
- v0.6.0 (commit 8042bb3828c6340da8d12062324e92b2077c571c, the sae-bench 0.6.0 wheel on PyPI):
  sae_bench/evals/base_eval_output.py (BaseEvalOutput and the abstract bases),
  sae_bench/evals/absorption/eval_config.py (AbsorptionEvalConfig),
  sae_bench/evals/absorption/eval_output.py (AbsorptionMeanMetrics, AbsorptionMetricCategories,
  AbsorptionResultDetail, AbsorptionEvalOutput).
- v0.3.2 (commit b5cb9852fed36d9b424537b46666578926e5204e): the same files. Its AbsorptionEvalConfig ends at
  k_sparse_probe_num_epochs (no min_GT_probe_f1, min_feats_for_eval, eval_k_sparse_probe_batch_size,
  precalc_k_sparse_probe_sae_acts: v0.3.2 applies no F1 filter), and its AbsorptionMeanMetrics has no std_dev_*
  fields; everything else is v0.6.0's.

Titles and descriptions are left out (they only label the UI). Like SAEBench's, these are pydantic dataclasses:
unknown keys are ignored, missing keys with a default take it, missing keys without one fail.

    TypeAdapter(AbsorptionEvalOutput).validate_python(json.load(f))      # v0.6.0
    TypeAdapter(AbsorptionEvalOutputV032).validate_python(json.load(f))  # v0.3.2
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any, Generic, TypeVar

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

# ---------------------------------------------------------------------------- base_eval_output.py (v0.6.0)


@dataclass
class BaseEvalConfig:
    pass


BaseEvalConfigType = TypeVar("BaseEvalConfigType", bound=BaseEvalConfig)


warnings.filterwarnings("ignore", message="Using `@model_validator` with mode='after' on a classmethod",
                        module=__name__)  # SAEBench's own validators are classmethods (deprecated in pydantic 2.12)


@dataclass
class BaseMetrics:
    @model_validator(mode="after")
    @classmethod
    def validate_dict(cls, data):
        for _, value in asdict(data).items():
            if isinstance(value, dict):
                raise ValueError("Metrics is designed to be a flat, one-level structure, so dicts are not allowed.")
        return data


BaseMetricsType = TypeVar("BaseMetricsType", bound=BaseMetrics)


@dataclass
class BaseMetricCategories:
    @model_validator(mode="after")
    @classmethod
    def validate_base_metric_type(cls, data):
        for field_name, field_value in data.__dict__.items():
            if not isinstance(field_value, BaseMetrics):
                raise ValueError(f"Field '{field_name}' in {cls.__name__} must inherit from BaseMetrics.")
        return data


BaseMetricCategoriesType = TypeVar("BaseMetricCategoriesType", bound=BaseMetricCategories)


@dataclass
class BaseResultDetail:
    pass


BaseResultDetailType = TypeVar("BaseResultDetailType", bound=BaseResultDetail)


@dataclass
class BaseEvalOutput(Generic[BaseEvalConfigType, BaseMetricCategoriesType, BaseResultDetailType]):
    eval_type_id: str = Field()
    eval_config: BaseEvalConfigType = Field()
    eval_id: str = Field()
    datetime_epoch_millis: int = Field()

    @field_validator("datetime_epoch_millis")
    @classmethod
    def validate_unix_time(cls, value: int) -> int:
        if value < 0:
            raise ValueError("Unix time must be a non-negative integer")
        if value > 9999999999999:
            raise ValueError("Unix time is unreasonably large")
        return value

    eval_result_metrics: BaseMetricCategoriesType = Field()
    eval_result_details: list[BaseResultDetailType] = Field(None)  # type: ignore
    sae_bench_commit_hash: str = Field()
    sae_lens_id: str | None = Field()
    sae_lens_release_id: str | None = Field()
    sae_lens_version: str | None = Field()
    sae_cfg_dict: dict[str, Any] | None = Field()
    eval_result_unstructured: Any | None = Field(default=None)


# ---------------------------------------------------------------------------- absorption/eval_config.py


@dataclass
class AbsorptionEvalConfigV032(BaseEvalConfig):
    """v0.3.2's fields (all with defaults)."""

    model_name: str = Field(default="")
    random_seed: int = Field(default=42)
    f1_jump_threshold: float = Field(default=0.03)
    max_k_value: int = Field(default=10)
    prompt_template: str = Field(default="{word} has the first letter:")
    prompt_token_pos: int = Field(default=-6)
    llm_batch_size: int = Field(default=10)
    llm_dtype: str = Field(default="float32")
    k_sparse_probe_l1_decay: float = Field(default=0.01)
    k_sparse_probe_batch_size: int = Field(default=4096)
    k_sparse_probe_num_epochs: int = Field(default=50)


@dataclass
class AbsorptionEvalConfig(AbsorptionEvalConfigV032):
    """v0.6.0: v0.3.2's fields, then these four."""

    min_GT_probe_f1: float = Field(default=0.6)
    min_feats_for_eval: int = Field(default=20, ge=1)
    eval_k_sparse_probe_batch_size: int = Field(default=24)
    precalc_k_sparse_probe_sae_acts: bool = Field(default=False)


V032_CONFIG_FIELDS = ("model_name", "random_seed", "f1_jump_threshold", "max_k_value", "prompt_template",
                      "prompt_token_pos", "llm_batch_size", "llm_dtype", "k_sparse_probe_l1_decay",
                      "k_sparse_probe_batch_size", "k_sparse_probe_num_epochs")
V060_CONFIG_FIELDS = V032_CONFIG_FIELDS + ("min_GT_probe_f1", "min_feats_for_eval", "eval_k_sparse_probe_batch_size",
                                           "precalc_k_sparse_probe_sae_acts")

# ---------------------------------------------------------------------------- absorption/eval_output.py

EVAL_TYPE_ID_ABSORPTION = "absorption_first_letter"


@dataclass
class AbsorptionMeanMetricsV032(BaseMetrics):
    mean_absorption_fraction_score: float = Field()
    mean_full_absorption_score: float = Field()
    mean_num_split_features: float = Field()


@dataclass
class AbsorptionMeanMetrics(AbsorptionMeanMetricsV032):
    std_dev_absorption_fraction_score: float = Field()
    std_dev_full_absorption_score: float = Field()
    std_dev_num_split_features: float = Field()


@dataclass
class AbsorptionMetricCategories(BaseMetricCategories):
    mean: AbsorptionMeanMetrics = Field()


@dataclass
class AbsorptionMetricCategoriesV032(BaseMetricCategories):
    mean: AbsorptionMeanMetricsV032 = Field()


@dataclass
class AbsorptionResultDetail(BaseResultDetail):
    first_letter: str = Field()

    @field_validator("first_letter")
    @classmethod
    def validate_single_letter(cls, value: str) -> str:
        if len(value) == 1 and value.isalpha():
            return value
        raise ValueError("First letter must be a single letter")

    mean_absorption_fraction: float = Field()
    full_absorption_rate: float = Field()
    num_full_absorption: int = Field()
    num_probe_true_positives: int = Field()
    num_split_features: int = Field()


@dataclass(config=ConfigDict(title="Absorption"))
class AbsorptionEvalOutput(BaseEvalOutput[AbsorptionEvalConfig, AbsorptionMetricCategories, AbsorptionResultDetail]):
    eval_config: AbsorptionEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: AbsorptionMetricCategories
    eval_result_details: list[AbsorptionResultDetail] = Field(default_factory=list)
    eval_type_id: str = Field(default=EVAL_TYPE_ID_ABSORPTION)


@dataclass(config=ConfigDict(title="Absorption"))
class AbsorptionEvalOutputV032(BaseEvalOutput[AbsorptionEvalConfigV032, AbsorptionMetricCategoriesV032,
                                              AbsorptionResultDetail]):
    eval_config: AbsorptionEvalConfigV032
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: AbsorptionMetricCategoriesV032
    eval_result_details: list[AbsorptionResultDetail] = Field(default_factory=list)
    eval_type_id: str = Field(default=EVAL_TYPE_ID_ABSORPTION)
