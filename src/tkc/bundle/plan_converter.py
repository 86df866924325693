"""The cattrs converter between resolved.json's tree and the plan types: strict, unknown keys refused.

Strict: JSON types are checked, never coerced (a str is not an int, a bool is not an int, a str is not a list);
an int where a float belongs is taken as that float, since JSON has one number type. A stage's `kind` picks its
options type, and `train` and `finetuning` belong to the training kinds only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn, get_origin

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, mapping_structure_factory, override

from tkc.bundle.plan import ResolvedTemplate
from tkc.bundle.plan_stage import (
    OPTIONS_BY_KIND,
    TRAINING_KINDS,
    ResolvedFinetuning,
    ResolvedStage,
    ResolvedTrain,
)

_JSON_NAMES = {str: "str", int: "int", float: "float", bool: "bool", type(None): "null", list: "list",
               dict: "object"}
Hook = Callable[[Any, Any], Any]


class PlanTypeError(ValueError):
    """A JSON value of the wrong type; its message is what the user reads after the key path."""


def _got(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _strict(expected: type) -> Hook:
    def structure(value: Any, _: Any) -> Any:
        if type(value) is expected:
            return value
        if expected is float and type(value) is int:
            return float(value)
        raise PlanTypeError(f"expected {_JSON_NAMES[expected]}, got {_got(value)}")
    return structure


def _checked(kind: type, base: Hook) -> Hook:
    """`base` after checking the value is a JSON object (kind dict) or array (kind list)."""
    def structure(value: Any, t: Any) -> Any:
        if not isinstance(value, kind):
            raise PlanTypeError(f"expected {_JSON_NAMES[kind]}, got {_got(value)}")
        return base(value, t)
    return structure


def _is_tuple(t: Any) -> bool:
    return get_origin(t) is tuple


def _is_mapping(t: Any) -> bool:
    return get_origin(t) in (dict, Mapping)


def _none_only(value: Any, _: Any) -> None:
    if value is not None:
        raise PlanTypeError(f"only training stages ({', '.join(TRAINING_KINDS)}) have this key")


def _stage_structure(conv: cattrs.Converter) -> Hook:
    """A stage's structure function, chosen by its kind."""
    def for_kind(kind: str) -> Hook:
        options = OPTIONS_BY_KIND[kind]
        training = kind in TRAINING_KINDS

        def typed(cl: type) -> Hook:
            return lambda v, _: conv.structure(v, cl)
        return make_dict_structure_fn(
            ResolvedStage, conv, _cattrs_forbid_extra_keys=True,
            options=override(struct_hook=typed(options)),
            train=override(struct_hook=typed(ResolvedTrain) if training else _none_only),
            finetuning=override(struct_hook=typed(ResolvedFinetuning) if training else _none_only))

    by_kind = {kind: for_kind(kind) for kind in OPTIONS_BY_KIND}

    def structure(value: Any, t: Any) -> ResolvedStage:
        if not isinstance(value, dict):
            raise PlanTypeError(f"expected object, got {_got(value)}")
        kind = value.get("kind")
        if not isinstance(kind, str) or kind not in by_kind:
            _unknown_kind(kind, "kind" in value)
        if kind not in TRAINING_KINDS:
            value = {"train": None, "finetuning": None, **value}
        return by_kind[kind](value, t)
    return structure


def _unknown_kind(kind: Any, present: bool) -> NoReturn:
    """Raise the error cattrs would for a bad `kind` attribute, so it is reported at `stages[i].kind`."""
    exc: Exception = KeyError("kind") if not present else PlanTypeError(
        f"unknown stage kind {kind!r} (known: {', '.join(OPTIONS_BY_KIND)})" if isinstance(kind, str)
        else f"expected str, got {_got(kind)}")
    exc.__notes__ = [AttributeValidationNote("Structuring class ResolvedStage @ attribute kind", "kind", str)]
    raise ClassValidationError("While structuring ResolvedStage", [exc], ResolvedStage)


def _omit_none(conv: cattrs.Converter, cl: type, names: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    """Unstructure `cl`, leaving out the keys in `names` whose value is None (they are absent in the JSON)."""
    base: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(cl, conv)

    def unstructure(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = base(obj)
        return {k: v for k, v in out.items() if not (k in names and v is None)}
    return unstructure


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True,
                            unstruct_collection_overrides={tuple: list})
    for t in (str, int, float, bool):
        conv.register_structure_hook(t, _strict(t))
    conv.register_structure_hook_factory(
        _is_tuple, lambda t: _checked(list, conv._structure_tuple))  # noqa: SLF001
    conv.register_structure_hook_factory(  # not conv.gen_structure_mapping: it registers its hook over this one
        _is_mapping, lambda t: _checked(dict, mapping_structure_factory(t, conv, dict, detailed_validation=True)))
    conv.register_structure_hook_factory(
        lambda t: attrs.has(t) and t is not ResolvedStage,
        lambda t: _checked(dict, conv.gen_structure_attrs_fromdict(t)))
    conv.register_structure_hook(ResolvedStage, _stage_structure(conv))
    conv.register_unstructure_hook(ResolvedFinetuning,
                                   _omit_none(conv, ResolvedFinetuning, ("lora", "freeze", "quantization",
                                                                     "multimodal")))
    conv.register_unstructure_hook(ResolvedStage, _omit_none(conv, ResolvedStage, ("train", "finetuning",
                                                                             "estimate")))
    conv.register_unstructure_hook(ResolvedTemplate, _omit_none(conv, ResolvedTemplate, ("now",)))
    return conv


converter = make_converter()
