"""Stage: spec. Load a tier's YAML task spec, validate it against its JSON Schema, freeze it.

The spec fixes everything a result depends on except the submission: datasets, models,
the rho grid, the conditions, the prompt, generation and the metric. Its hash goes into
every result file, so numbers from different specs are never mixed on the leaderboard.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from ..config import BUDGETS, CONDITION_HELP, CONDITIONS, REHEARSED_TIERS, TIERS  # noqa: F401 - defined in config.py, re-exported
from ..paths import PACKAGE_DIR, cache_dir, sha256_file, stable_hash

SPEC_DIR = PACKAGE_DIR / "specs"
#: earlier versions of a tier's spec, ``<spec_version>.yaml``, kept verbatim so that results made under
#: them still validate, verify and show (in their own sections) until they are re-run on the current one
SUPERSEDED_DIR = SPEC_DIR / "superseded"
SCHEMA_DIR = PACKAGE_DIR / "schemas"


class SpecError(ValueError):
    """A spec or data file that does not conform; the message names the file and field."""


@functools.lru_cache(maxsize=None)
def load_schema(schema_name: str) -> dict:
    """``schemas/<schema_name>`` as validation uses it (do not modify the dict). A schema that names
    conditions refers to its ``$defs/condition``, which the file leaves without values: they are
    filled in here from :data:`benchmark.config.CONDITIONS`, their one source."""
    schema = json.loads((SCHEMA_DIR / schema_name).read_text())
    if "condition" in schema.get("$defs", {}):
        schema["$defs"]["condition"]["enum"] = list(CONDITIONS)
    return schema


def validate_against(schema_name: str, obj, source: str, error: type[Exception] | None = None) -> None:
    """Validate ``obj`` with ``schemas/<schema_name>``; raise SpecError naming file and field."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {source}: field '{where}': {err.message}")
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise (error or SpecError)(f"{source} does not match {schema_name}:\n" + "\n".join(lines) + more)


@dataclass(frozen=True)
class Prompt:
    system: str | None
    user: str  # contains {document} and {question}
    answer_prefix: str
    no_context: str | None = None  # the user turn at rho = 1 ({question} only); None: `user` without the document


@dataclass(frozen=True)
class DataFile:
    path: Path
    sha256: str | None


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    test: DataFile
    dev: DataFile | None = None
    mirrors: str | None = None
    source: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)

    def split(self, name: str) -> DataFile:
        f = self.test if name == "test" else self.dev
        if f is None:
            raise SpecError(f"dataset {self.id} has no '{name}' split")
        return f


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    dtype: str
    source: dict
    default: bool = False
    prompt: Prompt | None = None
    description: str | None = None  # where the weights come from, exactly (docs)
    upstream: str | None = None  # the Hub id of the model the weights were made from

    @property
    def hub_id(self) -> str | None:
        """The Hub id this model is known by: ``upstream``, else an ``hf`` source's repo."""
        return self.upstream or (self.source.get("repo") if self.source.get("kind") == "hf" else None)


#: fields of a spec's model entries that document it and change no result: left out of the spec hash
DESCRIPTIVE_MODEL_FIELDS = ("description", "upstream")


def spec_hash(raw: dict) -> str:
    """The hash every result records: the whole spec but :data:`DESCRIPTIVE_MODEL_FIELDS`."""
    models = [{k: v for k, v in m.items() if k not in DESCRIPTIVE_MODEL_FIELDS} for m in raw["models"]]
    return stable_hash(raw | {"models": models})


@dataclass(frozen=True)
class GenerationSpec:
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricSpec:
    """How a generation becomes a score. Defaults are the mini tier's (and every spec's before
    these fields existed); the paper tier sets the paper's (see ``metrics.py``)."""

    normalization: str = "squad"  # "squad" | "paper": metrics.SCORERS
    extraction: str = "boxed_or_first_line"  # | "boxed_or_last_line": metrics.EXTRACTORS


@dataclass(frozen=True)
class Spec:
    spec_version: str
    tier: str
    datasets: tuple[DatasetSpec, ...]
    models: tuple[ModelSpec, ...]
    rhos: tuple[float, ...]
    conditions: tuple[str, ...]
    prompt: Prompt
    generation: GenerationSpec
    hash: str
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    metric: MetricSpec = field(default_factory=MetricSpec)
    budget: str = "kvpress"
    #: a rehearsal's overrides (``specs/paper-rehearsal.yaml``: ``rehearses``, ``stand_ins``, ``train``,
    #: ...); None for a spec that is run as itself
    rehearsal: dict | None = None

    @property
    def train_overrides(self) -> dict:
        """What a rehearsal lays over every submission's ``adapter.train`` ({} otherwise)."""
        return dict((self.rehearsal or {}).get("train", {}))

    def stands_in_for(self, model_id: str) -> str:
        """The rehearsed spec's model a stand-in model replaces (the id itself outside a rehearsal)."""
        stand_ins = (self.rehearsal or {}).get("stand_ins", {})
        return next((paper for paper, stand_in in stand_ins.items() if stand_in == model_id), model_id)

    def dataset(self, dataset_id: str) -> DatasetSpec:
        for d in self.datasets:
            if d.id == dataset_id:
                return d
        raise SpecError(f"spec {self.spec_version}: no dataset '{dataset_id}' (have: {[d.id for d in self.datasets]})")

    def model(self, model_id: str | None = None) -> ModelSpec:
        if model_id is None:
            return next((m for m in self.models if m.default), self.models[0])
        for m in self.models:
            if m.id == model_id:
                return m
        raise SpecError(f"spec {self.spec_version}: no model '{model_id}' (have: {[m.id for m in self.models]})")

    def prompt_for(self, model: ModelSpec) -> Prompt:
        return model.prompt or self.prompt

    def scoring(self):
        """The spec's :class:`benchmark.protocol.metrics.Scoring`: extraction, metric, scale and kept-entries budget."""
        from .metrics import Scoring

        return Scoring(normalization=self.metric.normalization, extraction=self.metric.extraction, budget=self.budget)


def _resolve_data_path(path: str) -> Path:
    """``prepared/...`` lives in the cache (paper tier, made by prepare-data); the rest in the package."""
    if path.startswith("prepared/"):
        return cache_dir() / "data" / path.removeprefix("prepared/")
    return PACKAGE_DIR / path


def _prompt(d: dict) -> Prompt:
    return Prompt(system=d["system"], user=d["user"], answer_prefix=d["answer_prefix"], no_context=d.get("no_context"))


#: Largest YAML file read, by schema. Shipped submissions are under 1 KiB and specs under 4 KiB;
#: the limits leave room for growth while keeping a hostile file from costing memory to parse.
YAML_MAX_BYTES = {"submission.schema.json": 64 * 1024, "spec.schema.json": 1024 * 1024}
#: Deepest nesting of mappings and sequences; PyYAML composes recursively, so a file of brackets
#: would otherwise end in RecursionError. Shipped files nest 4 deep.
YAML_MAX_DEPTH = 32


class _RefusedYAML(yaml.YAMLError):
    def __init__(self, problem: str, mark) -> None:
        super().__init__(problem)
        self.problem, self.line = problem, mark.line + 1


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and deep nesting while composing, so nothing is
    built first. An alias repeats a node without copying it: a few hundred bytes of nested aliases
    (the "billion laughs") load as a small shared object that explodes when it is hashed or
    serialised. No shipped file uses anchors."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _RefusedYAML(f"YAML anchors and aliases are not accepted ({sign}{event.anchor}); write the value out",
                               event.start_mark)
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise _RefusedYAML(f"nested more than {YAML_MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(path: Path, schema_name: str) -> dict:
    """Read a YAML file and validate it against ``schemas/<schema_name>``; errors name file and field.

    Files over ``YAML_MAX_BYTES``, anchors/aliases and nesting past ``YAML_MAX_DEPTH`` are refused
    with a one-line SpecError before anything is built."""
    limit = YAML_MAX_BYTES.get(schema_name, 64 * 1024)
    with open(path, "rb") as f:  # read at most limit + 1 bytes: the size on disk may lie (a FIFO, /dev/zero)
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise SpecError(f"{path}: larger than {limit // 1024} KiB, the limit for a file checked against {schema_name}")
    try:
        raw = yaml.load(blob.decode("utf-8"), Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.MarkedYAMLError as exc:
        line = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        raise SpecError(f"{path}: {line}not valid YAML: {exc.problem}") from None
    except _RefusedYAML as exc:
        raise SpecError(f"{path}: line {exc.line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    validate_against(schema_name, raw, str(path))
    return raw


def superseded_versions() -> tuple[str, ...]:
    """The spec versions in ``specs/superseded/``, sorted."""
    return tuple(sorted(p.stem for p in SUPERSEDED_DIR.glob("*.yaml")))


def spec_name(data: dict) -> str:
    """What :func:`load_spec` loads a result file's spec by: the version of a superseded spec, else the tier."""
    version = data.get("spec_version")
    return version if version in superseded_versions() else data["tier"]


def load_spec(tier_or_path: str | Path = "mini") -> Spec:
    """Load ``specs/<tier>.yaml``, a superseded spec by its version (``specs/superseded/<version>.yaml``)
    or a YAML path; validate it and freeze it."""
    path = Path(tier_or_path)
    if str(tier_or_path) in TIERS:
        path = SPEC_DIR / f"{tier_or_path}.yaml"
    elif str(tier_or_path) in superseded_versions():
        path = SUPERSEDED_DIR / f"{tier_or_path}.yaml"
    if not path.exists():
        raise SpecError(f"no spec at {path} (tiers: {', '.join(TIERS)}; superseded: "
                        f"{', '.join(superseded_versions()) or 'none'})")
    rehearsed = REHEARSED_TIERS.get(str(tier_or_path))
    read = [path] + ([SPEC_DIR / f"{rehearsed}.yaml", SPEC_DIR / "mini.yaml"] if rehearsed else [])
    return _load_spec(path, rehearsed is not None, tuple(sha256_file(p) for p in read), cache_dir())


@functools.lru_cache(maxsize=32)
def _load_spec(path: Path, rehearsal: bool, sha256s: tuple[str, ...], cache: Path) -> Spec:
    """The spec in ``path``, whose content is ``sha256``, built once per process: a Spec is frozen,
    and what it is built from is that content (a rehearsal's: its file, the spec it rehearses and the mini spec)
    and, for ``prepared/`` data paths, the cache folder."""
    raw = rehearsal_raw(path) if rehearsal else load_yaml(path, "spec.schema.json")
    datasets = tuple(
        DatasetSpec(
            id=d["id"],
            test=DataFile(_resolve_data_path(d["test"]["path"]), d["test"]["sha256"]),
            dev=DataFile(_resolve_data_path(d["dev"]["path"]), d["dev"]["sha256"]) if "dev" in d else None,
            mirrors=d.get("mirrors"),
            source=d.get("source", {}),
            expected=d.get("expected", {}),
        )
        for d in raw["datasets"]
    )
    models = tuple(
        ModelSpec(
            id=m["id"], name=m["name"], dtype=m["dtype"], source=m["source"], default=m.get("default", False),
            prompt=_prompt(m["prompt"]) if "prompt" in m else None, description=m.get("description"),
            upstream=m.get("upstream"),
        )
        for m in raw["models"]
    )
    gen = raw["generation"]
    return Spec(
        spec_version=raw["spec_version"],
        tier=raw["tier"],
        datasets=datasets,
        models=models,
        rhos=tuple(float(r) for r in raw["rhos"]),
        conditions=tuple(raw["conditions"]),
        prompt=_prompt(raw["prompt"]),
        generation=GenerationSpec(max_new_tokens=gen["max_new_tokens"], stop=tuple(gen.get("stop", ()))),
        hash=spec_hash(raw),
        raw=raw,
        metric=MetricSpec(normalization=raw["metric"].get("normalization", "squad"),
                          extraction=raw["metric"].get("extraction", "boxed_or_first_line")),
        budget=raw.get("budget", "kvpress"),
        rehearsal=raw.get("rehearsal"),
    )


def rehearsal_raw(path: Path) -> dict:
    """The raw spec of a rehearsal: the spec it ``rehearses`` with this file's overrides laid over
    it (its version, tier, description, data and generation; its stand-ins for the models, taken
    from the mini tier's entries in the rehearsal's dtype), the whole file kept under ``rehearsal``
    so the spec hash and every result file carry it. Validated against ``spec.schema.json``."""
    over = load_yaml(path, "rehearsal.schema.json")
    base = load_yaml(SPEC_DIR / f"{over['rehearses']}.yaml", "spec.schema.json")
    mini = {m["id"]: m for m in load_yaml(SPEC_DIR / "mini.yaml", "spec.schema.json")["models"]}
    paper_models = {m["id"]: m for m in base["models"]}
    models = []
    for paper_id, stand_in in over["stand_ins"].items():
        if paper_id not in paper_models or stand_in not in mini:
            raise SpecError(f"{path}: field 'stand_ins/{paper_id}': '{stand_in}' standing in for '{paper_id}'; the key "
                            f"must be a model of {over['rehearses']}.yaml ({', '.join(paper_models)}), the value one "
                            f"of mini.yaml ({', '.join(mini)})")
        paper = paper_models[paper_id]
        default = paper_id == over["default"] if "default" in over else paper.get("default", False)
        models.append({**mini[stand_in], "dtype": over["dtype"], "default": default,
                       "name": f"{mini[stand_in]['name']}, standing in for {paper['name']}"})
    raw = {**base, "spec_version": over["spec_version"], "tier": over["tier"], "description": over["description"],
           "datasets": over["datasets"], "models": models, "generation": over["generation"], "rehearsal": over}
    validate_against("spec.schema.json", raw, f"{path} laid over {over['rehearses']}.yaml")
    return raw


def known_spec_hashes() -> dict[str, str]:
    """spec hash -> spec_version for every spec shipped in the package, superseded ones included."""
    specs = [load_spec(name) for name in (*TIERS, *superseded_versions())]
    return {s.hash: s.spec_version for s in specs}


def current_version(tier: str) -> str:
    """The spec version ``evaluate`` runs for ``tier`` now."""
    return load_spec(tier).spec_version
