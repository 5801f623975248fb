"""The term table of VD's objective: ``L = L_ReID + beta (VSD + VCD + VML)`` (Eq. 16), ``L_ReID = L_cls + L_metric +
alpha L_DML`` (Eq. 17), one registered :class:`LossTerm` per weighted term.

A term is

* a **name**: the key of its weight (config ``vd.weights.<name>``), of its options (``vd.term_options.<name>.<option>``)
  and of its weighted value in a training step's terms and in ``train_log.jsonl``;
* a **function** ``fn(out, pids, ctx) -> Tensor``: its *unweighted* 0-dim value from the network's
  :class:`~vdreid.models.outputs.VDOutput`, the batch's identity labels and a :class:`TermContext` (the term's resolved
  options and the objective's shared settings);
* its weight's **default per recipe** (``{'paper': 8.0, 'official': 0.0}``; a recipe it does not name gives 0, off)
  and whether ``beta`` of Eq. 16 multiplies it;
* what it **needs** of the network (:class:`Needs`: the encoders and bottlenecks of Table 3): a run that does not
  build them trains without the term, whatever its weight (the ablation rows switch terms off this way);
* its **options** (:class:`TermOption`: a default, or a default per recipe, and a range or a set of choices);
* optionally a **module** factory, for a term that owns parameters (the conventional IB's critic networks), and an
  **active** predicate, for options that switch the term off (``metric`` kind ``none``).

:func:`register_term` is the one public call: the built-in terms (:mod:`vdreid.losses.vd_terms`) register through it
exactly as a plug-in does (``docs/adding-a-loss.md``). The recipe's defaults are resolved in one place,
:func:`resolve_objective`: a weight or option given as ``'recipe'`` (or left empty) takes the recipe's default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from vdreid import config as _config
from vdreid.errors import ConfigError
from vdreid.models.outputs import VDOutput

#: the recipes an objective is resolved for (``vd.recipe``): the paper's equations, the released code's computation
RECIPES = ("paper", "official")
#: the value of a weight or option that means "the recipe's default" (an empty value means the same)
RECIPE = "recipe"
#: the network's parts (Table 3): encoders ``E_I``, ``E_V``, ``E_S`` and their bottlenecks, by branch name
PARTS = ("ir", "vis", "shared")

Rule = tuple[Callable[[Any], bool], str]


@dataclass(frozen=True)
class Needs:
    """What a term compares, in Table 3's parts (branch names ``'ir'``, ``'vis'``, ``'shared'``): every encoder of
    ``encoders``, every bottleneck of ``bottlenecks``, and at least one bottleneck of ``one_bottleneck_of`` (when
    given). A bottleneck counts only with its encoder. The default needs nothing (any network)."""

    encoders: frozenset[str] = frozenset()
    bottlenecks: frozenset[str] = frozenset()
    one_bottleneck_of: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for f in ("encoders", "bottlenecks", "one_bottleneck_of"):
            value = frozenset(getattr(self, f))
            bad = sorted(value - set(PARTS))
            if bad:
                raise ValueError(f"Needs.{f}: unknown branch names {bad}; use {list(PARTS)}")
            object.__setattr__(self, f, value)

    def met(self, encoders: Collection[str], bottlenecks: Collection[str]) -> bool:
        """Whether a network building ``encoders`` and ``bottlenecks`` has what the term compares."""
        enc = set(encoders)
        bott = set(bottlenecks) & enc
        return (self.encoders <= enc and self.bottlenecks <= bott
                and (not self.one_bottleneck_of or bool(self.one_bottleneck_of & bott)))

    def describe(self) -> str:
        """In words, for messages and docs (``'encoders ir, vis'``)."""
        bits = []
        if self.encoders:
            bits.append("encoders " + ", ".join(sorted(self.encoders)))
        if self.bottlenecks:
            bits.append("bottlenecks " + ", ".join(sorted(self.bottlenecks)))
        if self.one_bottleneck_of:
            bits.append("a bottleneck of " + " or ".join(sorted(self.one_bottleneck_of)))
        return "; ".join(bits) or "nothing"


@dataclass(frozen=True)
class TermOption:
    """One option of a term.

    Attributes:
        default: the value, or a mapping recipe -> value (then the config default is ``'recipe'``).
        rule: for a number, its valid range ``(test, expected)`` (:func:`vdreid.config.at_least`, ...).
        choices: for a string, its valid values.
        doc: one line for the docs.
    """

    default: Any
    rule: Rule | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    @property
    def per_recipe(self) -> bool:
        return isinstance(self.default, Mapping)

    def example(self) -> Any:
        """A value of the option's type (its default, or the first recipe's)."""
        return next(iter(self.default.values())) if self.per_recipe else self.default


@dataclass(frozen=True)
class TermContext:
    """What a term's function gets besides the network's outputs and the labels.

    Attributes:
        options: the term's resolved options (no ``'recipe'`` left).
        recipe: ``'paper'`` or ``'official'``.
        temperature: ``T`` of the predictive distributions ``softmax(logits / T)`` (``vd.temperature``).
        detach_teacher: stop the gradient through a distillation teacher (``sg`` of Eq. 8; ``vd.detach_teacher``).
        branch_weights: the L_cls/L_metric weight of (ir, vis, shared_gray, shared_x), 0 for a branch not built.
        batch_size: the number of images in the batch (``len(pids)``).
        module: the term's own ``nn.Module`` (:attr:`LossTerm.module`), else None.
    """

    options: Mapping[str, Any]
    recipe: str
    temperature: float
    detach_teacher: bool
    branch_weights: tuple[float, float, float, float]
    batch_size: int
    module: nn.Module | None = None


TermFn = Callable[[VDOutput, Tensor, TermContext], Tensor]
#: ``factory(options, dims)`` -> the term's parameters; ``dims``: ``{'v': size of v, 'z': size of z}``
ModuleFactory = Callable[[Mapping[str, Any], Mapping[str, int]], nn.Module]


@dataclass(frozen=True)
class LossTerm:
    """A registered term (see the module docstring); made by :func:`register_term`."""

    name: str
    fn: TermFn
    defaults: Mapping[str, float]
    needs: Needs = field(default_factory=Needs)
    options: Mapping[str, TermOption] = field(default_factory=dict)
    beta: bool = False
    module: ModuleFactory | None = None
    active: Callable[[Mapping[str, Any]], bool] | None = None
    doc: str = ""

    def default_weight(self, recipe: str) -> float:
        return float(self.defaults.get(recipe, 0.0))

    def is_active(self, options: Mapping[str, Any]) -> bool:
        """Whether the term's options leave it on (e.g. ``metric`` kind ``none`` switches it off)."""
        return True if self.active is None else bool(self.active(options))


_TERMS: dict[str, LossTerm] = {}


def _where_fn(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register_term(
    name: str,
    fn: TermFn,
    defaults: Mapping[str, float] | float = 0.0,
    *,
    needs: Needs | None = None,
    options: Mapping[str, TermOption | Any] | None = None,
    beta: bool = False,
    module: ModuleFactory | None = None,
    active: Callable[[Mapping[str, Any]], bool] | None = None,
    doc: str = "",
) -> LossTerm:
    """Add a term to VD's objective (see the module docstring and ``docs/adding-a-loss.md``).

    Args:
        name: a lowercase identifier; the config keys ``vd.weights.<name>`` and ``vd.term_options.<name>.*`` appear
            in the default config, and the step's terms carry the weighted value under ``name``.
        fn: ``fn(out: VDOutput, pids: Tensor, ctx: TermContext) -> Tensor``, the unweighted 0-dim value.
        defaults: the weight per recipe (``{'paper': w, 'official': w2}``; an unnamed recipe: 0); one number for
            every recipe. 0 leaves the term off until a config sets ``vd.weights.<name>``.
        needs: the encoders and bottlenecks it compares (:class:`Needs`); a run without them trains without it.
        options: option name -> :class:`TermOption` (or a plain default value).
        beta: True when ``beta`` of Eq. 16 multiplies the term (VSD, VCD, VML).
        module: ``factory(options, dims)`` for a term with parameters (the optimiser gets them with the criterion's).
        active: ``active(options) -> bool`` when an option value switches the term off.

    Registering the same function under its name again replaces the entry (a module imported twice); another
    function under a taken name is an error. Returns the :class:`LossTerm`.
    """
    if not (isinstance(name, str) and name.isidentifier() and name == name.lower() and not name.startswith("_")):
        raise ValueError(f"register_term: the name must be a lowercase identifier (it is a config key), got {name!r}")
    if not callable(fn):
        raise TypeError(f"register_term('{name}'): `fn` must be callable (out, pids, ctx) -> Tensor, got {fn!r}")
    old = _TERMS.get(name)
    if old is not None and _where_fn(old.fn) != _where_fn(fn):
        raise ValueError(f"register_term: the term name '{name}' is taken by {_where_fn(old.fn)}")
    per_recipe = {r: defaults for r in RECIPES} if isinstance(defaults, (int, float)) else dict(defaults)
    for recipe, w in per_recipe.items():
        if recipe not in RECIPES:
            raise ValueError(f"register_term('{name}'): unknown recipe {recipe!r} in defaults; use {list(RECIPES)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"register_term('{name}'): the default weight of recipe '{recipe}' must be a number "
                             f">= 0, got {w!r}")
    opts: dict[str, TermOption] = {}
    for key, opt in (options or {}).items():
        if not (isinstance(key, str) and key.isidentifier()):
            raise ValueError(f"register_term('{name}'): option names must be identifiers, got {key!r}")
        opt = opt if isinstance(opt, TermOption) else TermOption(default=opt)
        if opt.per_recipe and set(opt.default) != set(RECIPES):
            raise ValueError(f"register_term('{name}'): option '{key}' has defaults for {sorted(opt.default)}; give "
                             f"one per recipe {list(RECIPES)} or a single default")
        for recipe_value in (opt.default.values() if opt.per_recipe else (opt.default,)):
            problem = _option_problem(opt, recipe_value)
            if problem:
                raise ValueError(f"register_term('{name}'): the default of option '{key}' is not valid: {problem}")
        opts[key] = opt
    term = LossTerm(name=name, fn=fn, defaults={r: float(w) for r, w in per_recipe.items()},
                    needs=needs if needs is not None else Needs(), options=opts, beta=bool(beta), module=module,
                    active=active, doc=doc)
    _TERMS[name] = term
    _config.defaults_changed()  # vd.weights / vd.term_options are built from this table
    return term


def unregister_term(name: str) -> None:
    """Remove a term (tests that register one for a while; a criterion already built keeps its terms)."""
    if _TERMS.pop(name, None) is not None:
        _config.defaults_changed()


def get_term(name: str) -> LossTerm:
    """The registered term ``name``; a :class:`~vdreid.errors.ConfigError` lists the names otherwise."""
    try:
        return _TERMS[name]
    except KeyError:
        raise ConfigError(f"unknown VD loss term {name!r}; registered: {term_names()} (a plug-in's term needs its "
                          "--plugin)") from None


def term_names() -> tuple[str, ...]:
    """The registered terms' names, in registration order (the order of a step's terms)."""
    return tuple(_TERMS)


def terms() -> tuple[LossTerm, ...]:
    return tuple(_TERMS.values())


# ------------------------------------------------------------------------------------------------ values
def is_recipe_value(value: Any) -> bool:
    """Whether a config value means "the recipe's default": ``'recipe'``, an empty string or None."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", RECIPE))


def _number(value: Any) -> float | None:
    """``value`` as a finite float (numbers, or their text as the config stores weights), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _option_problem(opt: TermOption, value: Any) -> str:
    """What is wrong with ``value`` for ``opt`` ('' when it is valid)."""
    example = opt.example()
    if isinstance(example, bool):
        return "" if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if isinstance(example, (int, float)):
        num = _number(value) if not isinstance(value, str) else None
        if num is None:
            return f"expected {opt.rule[1] if opt.rule else 'a finite number'}, got {value!r}"
        if isinstance(example, int) and not float(num).is_integer():
            return f"expected an integer, got {value!r}"
        if opt.rule is not None and not opt.rule[0](num):
            return f"expected {opt.rule[1]}, got {value!r}"
        return ""
    if opt.choices is not None and value not in opt.choices:
        return f"{value!r} is not one of {list(opt.choices)}"
    if opt.choices is None and not isinstance(value, type(example)):
        return f"expected {type(example).__name__}, got {value!r}"
    return ""


def _typed(opt: TermOption, value: Any) -> Any:
    example = opt.example()
    if isinstance(example, bool) or not isinstance(example, (int, float)):
        return value
    return int(value) if isinstance(example, int) else float(value)


def weight_key(name: str) -> str:
    return f"vd.weights.{name}"


def option_key(name: str, option: str) -> str:
    return f"vd.term_options.{name}.{option}"


@dataclass(frozen=True)
class Objective:
    """A resolved objective: every registered term's weight (before ``beta``; 0 = off) and options."""

    weights: dict[str, float]
    options: dict[str, dict[str, Any]]
    switched_off: dict[str, str]  # term -> why a nonzero weight was switched off (the parts it needs)


def resolve_objective(
    recipe: str,
    weights: Mapping[str, Any] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    encoders: Collection[str] | None = None,
    bottlenecks: Collection[str] | None = None,
    key: Callable[[str, str | None], str] | None = None,
) -> Objective:
    """The one place where recipe defaults are resolved: the weight and the options of every registered term.

    ``weights`` / ``options``: what a config or a caller gave, by term name (any term or option left out, or given
    as ``'recipe'`` / empty, takes the recipe's default). ``encoders`` / ``bottlenecks``: the parts the network
    builds (Table 3); a term whose :class:`Needs` they do not meet gets weight 0 (None: every part is built).
    ``key(term, option)`` names a value in error messages (default: the config keys ``vd.weights.<term>`` and
    ``vd.term_options.<term>.<option>``). Raises :class:`~vdreid.errors.ConfigError` (a ``ValueError``) naming the
    key, what was expected and the value.
    """
    key = key or (lambda t, o: f"config key '{weight_key(t) if o is None else option_key(t, o)}'")
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {list(RECIPES)}, got {recipe!r}")
    weights, options = dict(weights or {}), dict(options or {})
    for name in sorted((set(weights) | set(options)) - set(_TERMS)):
        where = key(name, None) if name in weights else key(name, next(iter(options[name]), "?"))
        raise ConfigError(f"{where}: unknown VD loss term '{name}'; registered terms: {list(_TERMS)} (a plug-in's "
                          "term needs its --plugin)")
    out_w: dict[str, float] = {}
    out_o: dict[str, dict[str, Any]] = {}
    off: dict[str, str] = {}
    for name, term in _TERMS.items():
        given = dict(options.get(name) or {})
        unknown = sorted(set(given) - set(term.options))
        if unknown:
            raise ConfigError(f"{key(name, unknown[0])}: term '{name}' has no option '{unknown[0]}'; its options are "
                              f"{sorted(term.options)}")
        resolved: dict[str, Any] = {}
        for opt_name, opt in term.options.items():
            value = given.get(opt_name, RECIPE)
            if is_recipe_value(value):
                value = opt.default[recipe] if opt.per_recipe else opt.default
            problem = _option_problem(opt, value)
            if problem:
                raise ConfigError(f"{key(name, opt_name)}: {problem}")
            resolved[opt_name] = _typed(opt, value)
        raw = weights.get(name, RECIPE)
        if is_recipe_value(raw):
            w = term.default_weight(recipe)
        else:
            num = _number(raw)
            if num is None or num < 0:
                raise ConfigError(f"{key(name, None)}: expected a number >= 0 (0 = off) or '{RECIPE}' for the "
                                  f"recipe's default, got {raw!r}")
            w = num
        if w > 0 and encoders is not None and not term.needs.met(encoders, bottlenecks or ()):
            off[name] = term.needs.describe()
            w = 0.0
        out_w[name], out_o[name] = w, resolved
    return Objective(out_w, out_o, off)


# ------------------------------------------------------------------------------------------------ config
def config_defaults() -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The defaults of the config's ``weights`` and ``term_options`` nodes built from the table: every term's
    weight is ``'recipe'``; an option with a default per recipe is ``'recipe'``, any other its default. Terms
    without options have no ``term_options`` node."""
    weights = {t.name: RECIPE for t in _TERMS.values()}
    options = {t.name: {k: (RECIPE if o.per_recipe else o.default) for k, o in t.options.items()}
               for t in _TERMS.values() if t.options}
    return weights, options


def option_ranges(prefix: str = "vd.term_options") -> dict[str, Rule]:
    """Range rules of the numeric options with a fixed default, by dotted config key."""
    return {f"{prefix}.{t.name}.{k}": o.rule for t in _TERMS.values() for k, o in t.options.items()
            if o.rule is not None and not o.per_recipe and not isinstance(o.default, bool)}


def option_free_keys(prefix: str = "vd.term_options") -> frozenset[str]:
    """Numeric options with a fixed default and no range (any finite value)."""
    return frozenset(f"{prefix}.{t.name}.{k}" for t in _TERMS.values() for k, o in t.options.items()
                     if o.rule is None and not o.per_recipe and isinstance(o.default, (int, float))
                     and not isinstance(o.default, bool))
