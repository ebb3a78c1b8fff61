"""A submission: ``submissions/<name>/submission.yaml`` = a compressor + an adapter recipe.

Example::

    name: snapkv
    authors: [Jane Doe]
    description: SnapKV on the document, QA LoRA adapter.
    compressor: {press: SnapKVPress, kwargs: {window_size: 16}}
    adapter:
      recipe: qa                      # none | qa | ctx_qa | ntp
      lora: {r: 16, alpha: 32, target_modules: [gate_proj, up_proj, down_proj], use_dora: true}
      train: {lr: 1.0e-3, epochs: 6, batch_size: 8}

``compressor.press`` is a kvpress class name or ``module:Class`` of a ``.py`` file in the
submission folder (a dataclass with kvpress's ``score`` signature).

Reading a submission imports no torch (``config`` holds its types); building its press or
checking a kvpress press name does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import (
    BASE,
    DEFAULT_ADAPTER_HEADLINE,
    LoraSettings,
    Recipe,
    TrainSettings,
    active_conditions,
    train_blocks,
    train_for,
)
from ..paths import folder_files, stable_hash
from .spec import SpecError, load_yaml


@dataclass(frozen=True)
class Submission:
    name: str
    path: Path
    raw: dict
    recipe: Recipe

    @property
    def compressor_cfg(self) -> dict:
        return self.raw["compressor"]

    @property
    def press_is_code(self) -> bool:
        """The press is the submission's own ``module:Class`` (it runs in the sandbox only)."""
        return ":" in self.compressor_cfg["press"]

    @property
    def has_code(self) -> bool:
        """The submission brings code of its own (a press or a QA hook), which only the sandbox
        (:class:`benchmark.trust.worker.SubmissionProcess`) runs."""
        return self.press_is_code or any(t.get("hook") for t in train_blocks(self.raw["adapter"]).values())

    def make_compressor(self):
        """The press the YAML names. A press of the submission's own code is built only in the
        sandbox (:func:`benchmark.paths.in_submission_process`); the harness never imports it."""
        from ..paths import in_submission_process
        from .compression import build_compressor  # torch and kvpress: only when a press is built

        cfg = self.compressor_cfg
        if self.press_is_code and not in_submission_process():
            raise ValueError(f"{self.path}: the press '{cfg['press']}' is submission code; it runs in the sandbox "
                             "(benchmark.trust.worker), never in the harness")
        press = build_compressor(cfg["press"], cfg.get("kwargs"), code_dir=self.path)
        if "score_depends_on_rho" in cfg:
            object.__setattr__(press, "score_depends_on_rho", cfg["score_depends_on_rho"])
        return press

    @property
    def headline_condition(self) -> str:
        if "headline_condition" in self.raw:
            return self.raw["headline_condition"]
        return DEFAULT_ADAPTER_HEADLINE if self.recipe.enabled else BASE

    def active_conditions(self, conditions) -> list[str]:
        """Which of ``conditions`` run for this submission: only ``base`` without an adapter."""
        return active_conditions(conditions, self.recipe.enabled)

    def for_model(self, model_id: str) -> "Submission":
        """This submission with its training settings for ``model_id`` (:func:`benchmark.config.train_for`).

        ``raw`` (and so :meth:`hash`) is unchanged: the overrides for every model are part of it.
        """
        merged = train_for(self.raw["adapter"], model_id)
        if merged == (self.raw["adapter"].get("train") or {}):
            return self
        train = dataclasses.replace(self.recipe.train, **merged)
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, train=train))

    def with_train(self, overrides: dict) -> "Submission":
        """This submission with ``overrides`` laid over its recipe's train settings (a rehearsal's
        caps, which its spec records); ``raw`` and :meth:`hash` are unchanged."""
        if not overrides:
            return self
        train = dataclasses.replace(self.recipe.train, **overrides)
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, train=train))

    def hash(self) -> str:
        """Identity of what was evaluated: the parsed YAML and every other file in the folder, at
        any depth (``__pycache__`` skipped), so a changed helper in a subfolder invalidates results.
        Files are keyed by their path relative to the folder; text as text (the hashes of
        submissions with only top-level ``.py`` files are unchanged), other bytes by their sha256."""
        code = folder_files(self.path, skip=("submission.yaml",))
        return stable_hash({"submission": self.raw, "code": code})


def load_submission(path: str | Path) -> Submission:
    path = Path(path)
    yml = path / "submission.yaml" if path.is_dir() else path
    if not yml.exists():
        raise SpecError(f"{yml}: no submission.yaml (a submission is a folder submissions/<name>/ holding one)")
    raw = load_yaml(yml, "submission.schema.json")
    folder = yml.parent
    if raw["name"] != folder.name and folder.parent.name == "submissions":
        raise SpecError(f"{yml}: field 'name': '{raw['name']}' must equal the folder name '{folder.name}'")
    ad = raw["adapter"]
    lora = dict(ad.get("lora", {}))
    if "target_modules" in lora:
        lora["target_modules"] = tuple(lora["target_modules"])
    train = dict(ad.get("train", {}))
    try:  # combinations the schema cannot express (e.g. ctx_window neighbours without paper synthesis)
        recipe = Recipe(
            name=ad["recipe"],
            lora=LoraSettings(**lora),
            train=TrainSettings(objective=ad["recipe"] if ad["recipe"] != "none" else "qa", **train),
            code_dir=str(folder),
        )
    except ValueError as exc:
        raise SpecError(f"{yml}: field 'adapter': {exc}") from exc
    _check_code_refs(yml, raw)
    sub = Submission(name=raw["name"], path=folder, raw=raw, recipe=recipe)
    for model_id in ad.get("per_model", {}):
        try:
            sub.for_model(model_id)
        except ValueError as exc:
            raise SpecError(f"{yml}: field 'adapter/per_model/{model_id}': {exc}") from exc
    return sub


def _check_code_refs(yml: Path, raw: dict) -> None:
    """Before anything is imported: the press is a kvpress press name or ``module:Class`` of a
    ``.py`` file in the submission folder, the hook a ``module:function`` of one, and the press
    kwargs leave ``compression_ratio`` to the framework."""
    from ..paths import submission_module_file
    from .compression import kvpress_press

    press = raw["compressor"]["press"]
    try:
        if ":" in press:
            submission_module_file(yml.parent, press.split(":")[0])
        else:
            kvpress_press(press)
    except ValueError as exc:
        raise SpecError(f"{yml}: field 'compressor/press': '{press}': {exc}") from None
    if "compression_ratio" in (raw["compressor"].get("kwargs") or {}):
        raise SpecError(f"{yml}: field 'compressor/kwargs': compression_ratio is set by the framework at every rho "
                        "of the grid; remove it")
    from .compression import check_press_kwargs

    try:
        check_press_kwargs(press, raw["compressor"].get("kwargs"))
    except ValueError as exc:
        raise SpecError(f"{yml}: {exc}") from None
    for where, train in train_blocks(raw["adapter"]).items():
        hook = train.get("hook")
        if not hook:
            continue
        if ":" not in hook:
            raise SpecError(f"{yml}: field '{where}/hook': '{hook}' must be module:function")
        try:
            submission_module_file(yml.parent, hook.split(":")[0])
        except ValueError as exc:
            raise SpecError(f"{yml}: field '{where}/hook': '{hook}': {exc}") from None
