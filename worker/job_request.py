"""An erasure job's request JSON, as stored on the catalog row, turned into engine inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from worker.erasure.concepts import ConceptGroup
from worker.erasure.errors import ErasureInputError
from worker.erasure.options import ErasureOptions

OPTION_NAMES = frozenset(f.name for f in fields(ErasureOptions)) - {"extra"}


@dataclass(frozen=True)
class ErasureRequest:
    """What the engine needs, plus the catalog fields the erased model is recorded with."""

    groups: list[ConceptGroup]
    options: ErasureOptions
    prompt_set_id: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


def parse_request(request: dict, *, prompt_set: Callable[[str], list[str]]) -> ErasureRequest:
    """The engine's groups and options from a job's request; raises `ErasureInputError`.

    Args:
        request: `{"concepts": [{"targets", "kind", "anchor"}], "stages", "options", "seed",
            "preservation_prompt_set", "name", "tags"}`; options left out or None take the
            concept kind's defaults.
        prompt_set: the prompts of a prompt set, by id (raises `ErasureInputError` if unknown).
    """
    groups = [_group(concept) for concept in request.get("concepts") or []]
    values = {k: v for k, v in (request.get("options") or {}).items() if v is not None}
    unknown = sorted(set(values) - OPTION_NAMES)
    if unknown:
        raise ErasureInputError(f"unknown option(s) {', '.join(unknown)}")
    if request.get("stages"):
        values["stages"] = request["stages"]
    if "stages" in values:
        values["stages"] = tuple(values["stages"])
    if request.get("seed") is not None:
        values["seed"] = request["seed"]
    prompt_set_id = request.get("preservation_prompt_set")
    if prompt_set_id:
        values["preservation_prompts"] = tuple(prompt_set(prompt_set_id))
    elif values.get("preservation_prompts") is not None:
        values["preservation_prompts"] = tuple(values["preservation_prompts"])
    try:
        options = ErasureOptions(**values)
    except TypeError as exc:
        raise ErasureInputError(f"invalid options: {exc}") from exc
    return ErasureRequest(
        groups,
        options.validate(),
        prompt_set_id,
        request.get("name"),
        list(request.get("tags") or []),
    )


def _group(concept) -> ConceptGroup:
    if isinstance(concept, str):
        return ConceptGroup.parse(concept)
    targets = concept.get("targets") or ()
    kind = concept.get("kind") or "object"
    templates = tuple(concept.get("templates") or ())
    if isinstance(targets, str):
        targets = ConceptGroup.parse(targets, kind).targets
    return ConceptGroup(tuple(targets), kind, concept.get("anchor"), templates)


def recorded_options(request: ErasureRequest) -> dict:
    """The resolved options for the catalog: every value the run used, prompts by reference."""
    options = request.options.resolve(request.groups).to_dict()
    prompts = options.pop("preservation_prompts", None)
    if request.prompt_set_id:
        options["preservation_prompt_set"] = request.prompt_set_id
    elif prompts is not None:
        options["preservation_prompts"] = prompts
    return options
